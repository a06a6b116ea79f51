from tests.chat.conftest import gemma  # noqa: F401  (the default model, in the unserved pool)
