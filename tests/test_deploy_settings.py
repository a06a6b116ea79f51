"""Production settings come from the environment: `manage.py check --deploy` passes with the
README's production variables and fails when one of them is unsafe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from tests.conftest import REPO

STRONG_KEY = "k3Yq9-vX2mZ7pL0sR4tW8uB1nC6dF5gH_jK2lM9qA3sD7fG0hJ"  # 50 characters, varied
PRODUCTION = {
    "DEBUG": "false",
    "SECURE_COOKIES": "true",
    "SECRET_KEY": STRONG_KEY,
    "ALLOWED_HOSTS": "corral.example.com",
}


def deploy_check(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """`manage.py check --deploy` in a clean environment: only PATH, a fresh DATA_DIR (so no
    secret key file or database of the developer's is read) and the given variables."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATA_DIR": str(tmp_path / "data")}
    env.update(variables)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_variables_pass_the_deploy_check(tmp_path):
    assert len(STRONG_KEY) == 50
    result = deploy_check(tmp_path, **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_a_tls_proxy_header_is_accepted(tmp_path):
    result = deploy_check(
        tmp_path, **PRODUCTION, SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https"
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "warning"),
    [
        ({"DEBUG": "true"}, "security.W018"),
        ({"SECRET_KEY": "too-short-0123456789"}, "security.W009"),
        ({"SECURE_COOKIES": "false"}, "security.W012"),  # and no HSTS, no redirect
        ({"SECURE_HSTS_PRELOAD": "false"}, "security.W021"),
        ({"SECURE_SSL_REDIRECT": "false"}, "security.W008"),
    ],
)
def test_an_unsafe_value_fails_the_deploy_check(tmp_path, change, warning):
    result = deploy_check(tmp_path, **{**PRODUCTION, **change})
    assert result.returncode != 0
    assert warning in result.stdout + result.stderr


def test_a_malformed_proxy_header_is_refused_at_start(tmp_path):
    result = deploy_check(tmp_path, **PRODUCTION, SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto")
    assert result.returncode != 0
    assert "SECURE_PROXY_SSL_HEADER" in result.stderr


@pytest.mark.django_db
def test_plain_http_is_redirected_except_health_checks(settings):
    settings.SECURE_SSL_REDIRECT = True  # what SECURE_COOKIES=true turns on
    client = Client()  # a new client loads the middleware with this setting
    response = client.get("/login/")
    assert response.status_code == 301 and response.url.startswith("https://")
    assert client.get("/healthz").content == b"ok"
    assert client.get("/login/", secure=True).status_code == 200
