# docker build -t polymodal:2.60.0 . && docker build -t polymodal:2.60.0-gpu --build-arg VARIANT=gpu .
# polymodal's runtime image for Ray clusters (deploy/kuberay, VMs): Ray's own image at the Ray
# version constraints.txt pins, so head, workers and job drivers all run the same Ray and Python.

# Tags are {ray}-py311-{cpu|gpu}: cpu is Ubuntu; gpu aliases Ray's default CUDA build (cuXXX).
ARG RAY_VERSION=2.60.0
ARG VARIANT=cpu
FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT}

# The Ray image's user `ray` (uid 1000, group users = 100) owns its Python environment, so pip
# never needs root; numeric, so Kubernetes' runAsNonRoot can check it.
USER 1000:100
# Made by that user, not by WORKDIR (root on some builders): the install below writes in it.
RUN mkdir /home/ray/polymodal
WORKDIR /home/ray/polymodal

# torch first (as scripts/setup.sh does) so nothing after it pulls another build; its own layer,
# rebuilt only when the pins change. Its wheels bring their own CUDA 13 libraries: GPU nodes need
# an NVIDIA driver recent enough for CUDA 13, whatever CUDA the gpu base image has.
COPY --chown=1000:100 constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt torch==2.14.1 torchvision==0.29.1

# A regular (not editable) install; the build leaves nothing behind in the source tree. The
# search extra (FAISS) lets the Searcher open hnsw/ivf indexes; tracking feeds TensorBoard/MLflow/W&B.
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 platform/ platform/
RUN pip install --no-cache-dir -c constraints.txt ".[search,tracking]" \
    && rm -rf build platform/*.egg-info

COPY --chown=1000:100 jobs/ jobs/
COPY --chown=1000:100 serve/ serve/

# Serve replicas import serve.app:app and job drivers jobs/*.py from any working directory.
ENV PYTHONPATH=/home/ray/polymodal
