# Training image for the cluster (openrlhf) backend:
#   docker build -t srft-openrlhf .
#   docker run --gpus all --shm-size=16g -v $DATA:/data srft-openrlhf bash scripts/train_srft_qwen2.5_math_7b.sh
# The installs are exactly those of docs/cluster.md ("Manual install"), from requirements-gpu.txt.
# The base must carry CUDA's compiler (a -devel image, for flash-attn) and a CUDA version that
# torch 2.13.0's PyPI wheels support; the torch it ships is replaced by the pinned one if it differs.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-devel
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    MAX_JOBS=8 \
    PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/srft-openrlhf
COPY requirements-gpu.txt .
RUN pip install $(grep -E '^(torch|ninja|packaging|psutil|wheel)==' requirements-gpu.txt) \
 && pip install --no-build-isolation -r requirements-gpu.txt

# only what the package and the scripts need (not a local .venv or runs/)
COPY pyproject.toml README.md ./
COPY srft_openrlhf srft_openrlhf
COPY evaluation evaluation
COPY configs configs
COPY scripts scripts
RUN pip install --no-deps -e .

CMD ["bash"]
