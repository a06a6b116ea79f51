"""Quantize figures: sizes and tok/s before and after, through the real model job.

Each target type runs as the Models page runs it (``webui.library.jobs.run_job``: llama.cpp's
quantizer in a child process, then 32 greedy tokens timed on the source and the result),
in a private DATA_DIR with SQLite. The source must be an F32/F16/BF16/Q8_0 GGUF; the kit's
random-weight writer makes one (no weights are downloaded):

    .venv/bin/python ../shared/gpu/make_model.py /tmp/rand-f16.gguf
    .venv/bin/python bench/quantize_bench.py --model /tmp/rand-f16.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an F32/F16/BF16/Q8_0 GGUF")
    parser.add_argument("--types", default="Q8_0,Q5_K_M,Q4_K_M")
    parser.add_argument("--chat-format", default="chatml", help="for a file without a template")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="corral-quantize-"))
    models = tmp / "models"
    models.mkdir()
    source = models / Path(args.model).name
    os.symlink(Path(args.model).resolve(), source)
    os.environ.update(DATA_DIR=str(tmp), MODELS_DIR=str(models))
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webui.settings")
    redis_server = None
    if not os.environ.get("REDIS_URL"):  # jobs send nothing, but the settings want one
        from webui.run.processes import redis_server_argv, wait_for_unix_socket

        sock = tmp / "redis.sock"
        os.environ["REDIS_URL"] = f"unix://{sock}"
        import subprocess

        redis_server = subprocess.Popen(redis_server_argv(sock, tmp), stdout=subprocess.DEVNULL)
        wait_for_unix_socket(sock)
    try:
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        from webui.chat.models import Backend, LanguageModel
        from webui.library import actions, jobs

        call_command("migrate", verbosity=0)
        admin = get_user_model().objects.create_user("bench", is_staff=True)
        from inference.gguf_info import inspect_gguf

        info = inspect_gguf(source)
        model = LanguageModel.objects.create(
            name="source",
            backend=Backend.LLAMA_CPP,
            target=str(source),
            settings={} if info.has_chat_template else {"chat_format": args.chat_format},
            details={"quantization": info.quantization, "size_bytes": info.size_bytes},
        )
        rows = []
        for target in args.types.split(","):
            job = actions.start_quantize(
                admin, source_id=model.pk, target_type=target, name=f"source-{target}"
            )
            jobs.run_job(job.pk, "bench")
            job.refresh_from_db()
            rows.append({"type": target, "state": job.state, "error": job.error, **job.result})
    finally:
        if redis_server is not None:
            redis_server.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"source: {Path(args.model).name} ({info.quantization}, {info.size_bytes / 1e6:.1f} MB)")
    print(f"{'type':8}{'MB':>9}{'src tok/s':>11}{'tok/s':>9}{'seconds':>9}")
    for row in rows:
        if row["state"] != "done":
            print(f"{row['type']:8} {row['state']}: {row['error']}")
            continue
        print(
            f"{row['type']:8}{row['size_bytes'] / 1e6:>9.1f}{row['source_tokens_per_second']:>11}"
            f"{row['tokens_per_second']:>9}{row['seconds']:>9}"
        )


if __name__ == "__main__":
    main()
