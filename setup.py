from setuptools import find_packages, setup

setup(
    name="genperf",
    version="0.1.0",
    description="Fast, trustworthy training of classic deep generative models (GANs, VAEs, RealNVP)",
    packages=find_packages(include=["genperf", "genperf.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "torchvision", "numpy", "scikit-learn", "matplotlib", "tqdm", "pillow"],
)
