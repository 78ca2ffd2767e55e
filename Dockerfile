# LLaVA x OneVision-Encoder: one image for training, evaluation and serving on NVIDIA GPUs.
#
#   docker build -t llava-ov .
#   docker run --rm llava-ov                      # prints how to use it
#
# docs/docker.md explains the build arguments, the volumes and the run commands. The image was
# written without a Docker daemon or a GPU at hand: it has not been built or run yet.
#
# Why these versions:
# * torch 2.13.0 is the version the project's test suite runs on (scripts/setup_env.sh pins its
#   CPU build). Its default Linux x86-64 wheel on PyPI is built against CUDA 13.0 (it depends on
#   cuda-toolkit 13.0.3 and nvidia-cudnn-cu13), so the base image is a CUDA 13.0 *devel* image:
#   flash-attn compiles with nvcc against the installed torch, and nvcc must have torch's CUDA
#   major version (checked below). The host needs an NVIDIA driver that supports CUDA 13 (R580+).
#   For another CUDA line, change CUDA_IMAGE, TORCH_VERSION and TORCH_INDEX_URL together. The
#   image has no cuDNN of its own: torch brings its cuDNN wheel, and nothing else here uses one.
# * Python 3.11, the version the test suite runs on. Ubuntu 22.04 ships only 3.10, which current
#   releases of transformers 5 and numpy no longer support (transformers 5.24 and numpy 2.4 need
#   3.11), so uv (from PyPI) installs a standalone CPython 3.11 (PYTHON_VERSION).
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-devel-ubuntu22.04
FROM ${CUDA_IMAGE}

# The Python of the virtualenv, installed by uv.
ARG PYTHON_VERSION=3.11
ARG UV_VERSION=0.13.9
# torch: the version, and an index other than PyPI if wanted (e.g. a PyTorch CUDA-12 wheel index).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
# flash-attn is compiled here, against the torch above (no prebuilt wheel is downloaded). One
# compile job can take several GB of RAM: raise MAX_JOBS on a big build machine. The kernels are
# built for these GPU architectures only (80: A100 / A10 / RTX 30xx-40xx, 90: H100 / H200;
# add 100 and 120 for Blackwell). Fewer architectures build faster.
ARG FLASH_ATTN_VERSION=2.8.3
ARG MAX_JOBS=4
ARG FLASH_ATTN_CUDA_ARCHS="80;90"
# The project's extras: train (accelerate, peft, deepspeed), eval (lmms-eval 0.7.3, filelock<4),
# serve (fastapi, uvicorn), gpu (flash-attn, already built above, so nothing more happens).
ARG EXTRAS=train,eval,serve,gpu
ARG USER_UID=1000

SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# No ffmpeg: PyAV's wheels carry their own FFmpeg. git is called by flash-attn's setup.py,
# build-essential compiles flash-attn and DeepSpeed's JIT ops. The system Python only runs pip
# once, to install uv.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3-pip build-essential git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m pip install --no-cache-dir "uv==${UV_VERSION}"

# A non-root user owns the virtualenv, the code and the data folders, so pip, numba's kernel cache
# (next to the code) and DeepSpeed / torch extension builds (~/.cache) can write where they need to.
RUN useradd --create-home --uid "${USER_UID}" --shell /bin/bash llava \
 && mkdir -p /opt/python /opt/venv /workspace /data/hf \
 && chown llava:llava /opt/python /opt/venv /workspace /data /data/hf
USER llava

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    CUDA_HOME=/usr/local/cuda \
    CC=gcc \
    CXX=g++ \
    HF_HOME=/data/hf

RUN uv venv --seed --managed-python --python "${PYTHON_VERSION}" /opt/venv \
 && pip install --upgrade pip setuptools wheel packaging ninja psutil

# torch first, then kept: every later install gets it as a constraint (as scripts/setup_env.sh
# does), so no dependency can swap it for another build.
RUN pip install ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} "torch==${TORCH_VERSION}" \
 && python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > /opt/venv/torch-constraint.txt \
 && python -c "import re, subprocess, torch; \
nvcc = re.search(r'release (\d+)', subprocess.check_output(['nvcc', '--version'], text=True)).group(1); \
print('torch', torch.__version__, 'built for CUDA', torch.version.cuda, '| nvcc', nvcc); \
assert torch.version.cuda and torch.version.cuda.split('.')[0] == nvcc, \
'torch and nvcc have different CUDA major versions: flash-attn would not build; change CUDA_IMAGE or TORCH_INDEX_URL'"

# flash-attn, built against that torch (--no-build-isolation) for FLASH_ATTN_CUDA_ARCHS. This is the
# long step (tens of minutes); it is cached as long as the lines above do not change.
RUN MAX_JOBS="${MAX_JOBS}" FLASH_ATTN_CUDA_ARCHS="${FLASH_ATTN_CUDA_ARCHS}" FLASH_ATTENTION_FORCE_BUILD=TRUE \
    pip install --no-build-isolation "flash-attn==${FLASH_ATTN_VERSION}" -c /opt/venv/torch-constraint.txt

# The project, editable (the scripts run from /workspace), with its extras. DeepSpeed's CUDA ops are
# compiled on first use (JIT), with the nvcc of this image.
WORKDIR /workspace
COPY --chown=llava:llava . /workspace
RUN pip install -e ".[${EXTRAS}]" -c /opt/venv/torch-constraint.txt \
 && if python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then \
        python -c "import torchvision" >/dev/null 2>&1 || pip uninstall -y torchvision; \
    fi \
 && mkdir -p /workspace/checkpoints /workspace/outputs \
 && python -c "import torch, llava, cv_reader; from importlib.metadata import version as v; \
print('torch', torch.__version__, '(CUDA', str(torch.version.cuda) + ')', '| flash-attn', v('flash-attn'), \
'| deepspeed', v('deepspeed'), '| lmms-eval', v('lmms-eval'), '| transformers', v('transformers'), '| av', v('av'))"

# Model and dataset downloads (Hugging Face hub cache, lmms-eval's benchmark videos) go to HF_HOME.
VOLUME ["/data/hf"]
# python -m llava.serve.openai_api --host 0.0.0.0 --port 8000
EXPOSE 8000

CMD ["bash", "-c", "echo 'LLaVA x OneVision-Encoder image (docs/docker.md). Run one of:'; echo '  bash scripts/sft_ov_encoder.sh                                                  SFT (PRESET=tiny: a tiny CPU-sized run)'; echo '  bash scripts/pretrain_ov_encoder.sh                                             projector pre-training'; echo '  TASKS=videomme MODEL_PATH=CKPT bash scripts/eval/eval_ov_encoder.sh             evaluation with lmms-eval'; echo '  python -m llava.serve.openai_api --model-path CKPT --host 0.0.0.0 --port 8000   OpenAI-compatible server'; echo '  python -m llava.serve.cli --model-path CKPT --image photo.jpg                   chat in the terminal'; python -c 'import torch; print(\"torch\", torch.__version__, \"| CUDA\", torch.version.cuda, \"| GPUs visible:\", torch.cuda.device_count())'"]
