# stkd-keras on Debian with Python 3.11 and Fashion-MNIST (Debian's dataset-fashion-mnist) for offline runs.
#   docker build -t stkd-keras .
#   docker run --rm -v "$PWD/runs:/runs" stkd-keras distill --dataset fashion_mnist --output /runs/stkd
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# g++: compiled PyTorch steps (jit_compile=True on the torch backend) build C++ against the image's Python headers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist g++ \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/stkd-keras
COPY requirements.txt pyproject.toml README.md ./
# The CPU build of PyTorch first (PyPI's default is a CUDA build of several GB); requirements.txt then keeps it.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install -r requirements.txt
COPY stkd_keras ./stkd_keras
COPY export ./export
COPY cli ./cli
COPY recipes ./recipes
RUN pip install --no-deps .

WORKDIR /runs
ENTRYPOINT ["stkd-keras"]
CMD ["--help"]
