# The chat tests' fixtures: models in the pool no test worker serves, so a test claims
# and runs answers itself.
from tests.chat.conftest import cpu_model, gemma, gpu_worker_alive  # noqa: F401
