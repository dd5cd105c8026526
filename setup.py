"""tfpurify: GAN- and autoencoder-based defenses against adversarial examples (TF2 / Keras)."""

from setuptools import find_packages, setup

setup(
    name="tfpurify",
    version="0.1.0",
    description="Train, evaluate (white-box adaptive), tune and export GAN/autoencoder defenses "
                "against adversarial examples for TF2/Keras image classifiers.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tfpurify", "tfpurify.*", "cli", "cli.*"]),
    python_requires=">=3.9,<3.12",  # TensorFlow 2.15 supports CPython 3.9-3.11
    install_requires=[
        "tensorflow-cpu==2.15.1",
        "tensorflow-addons==0.23.0",
        "cleverhans==4.0.0",
        "keras-tuner==1.4.7",
        "click>=8.1",
        "numpy<2",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "scipy>=1.10",
        "scikit-learn>=1.3",
    ],
    extras_require={
        "gpu": ["tensorflow[and-cuda]==2.15.1"],
        "dev": ["pytest>=7", "pytest-xdist==3.8.0", "nbclient>=0.9", "nbformat>=5.9", "ipykernel>=6",
                "import-linter==2.16"],  # tests/test_architecture.py: the layer contracts of .importlinter
        "bench": ["adversarial-robustness-toolbox>=1.17", "multiprocess"],  # ART's AutoAttack imports multiprocess
        "mutation": ["mutmut==3.8.1"],  # make mutation
        # benchmarks/autoattack_parity_fmnist.py runs the original AutoAttack (PyTorch) in a second process;
        # on Linux, PyPI's torch wheel pulls CUDA libraries: on a CPU-only machine take the CPU build
        # (pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)
        "parity": ["torch==2.13.0"],
        "svhn": ["tensorflow-datasets>=4.9,<4.10"],
        # `tfpurify eval --corruptions`: albumentations' transforms with fixed CIFAR-10-C severities;
        # OpenCV 4.10 headless, since OpenCV 5 wheels need numpy 2 and TensorFlow 2.15 needs numpy<2
        "corruptions": ["albumentations==2.0.8", "albucore==0.0.24", "opencv-python-headless==4.10.0.84"],
    },
    entry_points={"console_scripts": ["tfpurify = cli.main:cli"]},
)
