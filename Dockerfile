# syntax=docker/dockerfile:1
#
# Corral images. Two targets, both used by compose.yaml:
#   cpu  the web server and the CPU worker (python:3.11-slim; llama.cpp built for any x86-64-v3/arm64 CPU)
#   gpu  the CUDA worker (llama.cpp built with -DGGML_CUDA=on, run on the CUDA runtime image)
#
#   docker build --target cpu -t corral:cpu .
#   docker build --target gpu -t corral:gpu --build-arg CUDA_ARCHITECTURES=89 .   # one arch builds faster
#
# No HEALTHCHECK here: the same image runs the Celery workers, which serve no HTTP; compose.yaml
# gives the web service its own. No collectstatic either: whitenoise serves static/ via finders.

ARG PYTHON_VERSION=3.11
ARG CUDA_VERSION=12.4.1
ARG UBUNTU_VERSION=22.04

# ---------------------------------------------------------------------------------------------
# cpu-build: compile the dependencies (llama-cpp-python ships only an sdist on PyPI) into a venv.
FROM python:${PYTHON_VERSION}-slim AS cpu-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# ggml defaults to -march=native, which would make the image die with SIGILL on a CPU older than
# the build host's. OFF keeps the AVX2/FMA baseline; pass "-DGGML_NATIVE=ON" for a local-only image.
ARG LLAMA_CPU_CMAKE_ARGS="-DGGML_NATIVE=OFF"
WORKDIR /src
# Dependencies from pyproject.toml alone, so an edit to the code does not recompile llama.cpp.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && CMAKE_ARGS="${LLAMA_CPU_CMAKE_ARGS}" pip install -r /tmp/requirements.txt

# ---------------------------------------------------------------------------------------------
# cpu: the runtime image, without compilers.
FROM python:${PYTHON_VERSION}-slim AS cpu
# libgomp1: llama.cpp's OpenMP runtime. A fixed uid, shared with the gpu target, so both can
# write the shared /data volume.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 corral \
 && useradd --uid 10001 --gid corral --create-home --shell /usr/sbin/nologin corral \
 && mkdir -p /data \
 && chown corral:corral /data
COPY --from=cpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=webui.settings \
    DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8000
WORKDIR /app
COPY . .
# Editable, so webui.config.BASE_DIR is /app and templates/ and static/ (not package data) are
# found; --no-deps because the venv already holds every dependency.
RUN pip install --no-cache-dir --no-deps -e .
USER corral
VOLUME /data
EXPOSE 8000
# --ws-max-size: webui.config.WS_MAX_BYTES's default (CORRAL_MAX_MESSAGE_CHARS * 4 + 64 KiB).
CMD ["uvicorn", "webui.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--ws-max-size", "193536"]

# ---------------------------------------------------------------------------------------------
# gpu-build: llama-cpp-python compiled against CUDA, then the rest of the dependencies.
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS gpu-build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Compute capabilities to build kernels for (Turing to Hopper); fewer build faster.
ARG CUDA_ARCHITECTURES="75;80;86;89;90"
WORKDIR /src
COPY pyproject.toml ./
# llama-cpp-python first, with CUDA, at the version pyproject.toml asks for, so the later
# `pip install -r` finds it satisfied and does not replace it with a CPU-only build.
# There is no driver at build time: link against CUDA's stub libcuda (the real one is mounted
# by the NVIDIA container runtime), and fail here if the CUDA backend was not built.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && grep '^llama-cpp-python' /tmp/requirements.txt > /tmp/llama.txt \
 && ln -s /usr/local/cuda/lib64/stubs/libcuda.so /usr/local/cuda/lib64/stubs/libcuda.so.1 \
 && LD_LIBRARY_PATH=/usr/local/cuda/lib64/stubs:${LD_LIBRARY_PATH} \
    CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" \
    pip install -r /tmp/llama.txt \
 && rm /usr/local/cuda/lib64/stubs/libcuda.so.1 \
 && test -n "$(find /opt/venv -name 'libggml-cuda.so*' -print -quit)"
RUN pip install -r /tmp/requirements.txt

# ---------------------------------------------------------------------------------------------
# gpu: the CUDA runtime image (cuBLAS and cudart, no nvcc) with the venv built above.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 corral \
 && useradd --uid 10001 --gid corral --create-home --shell /usr/sbin/nologin corral \
 && mkdir -p /data \
 && chown corral:corral /data
COPY --from=gpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=webui.settings \
    DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8000
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir --no-deps -e .
USER corral
VOLUME /data
CMD ["celery", "-A", "workers.celery_app", "worker", "-Q", "gpu", "--concurrency", "1", "-n", "gpu@%h", "--loglevel", "INFO"]
