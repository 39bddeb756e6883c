from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="escoin-tvm",
    version="0.1.0",
    description="Escoin's sparse direct convolution for pruned CNNs on NVIDIA GPUs, built on Apache TVM",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["escoin_tvm", "escoin_tvm.*"]),
    python_requires=">=3.9",
    data_files=[("share/escoin-tvm/schedules", [str(p) for p in Path("schedules").glob("*.json")])],
    install_requires=[
        "apache-tvm==0.27.0.post1",
        "apache-tvm-ffi==0.1.14.post0",  # 0.1.15 makes MetaSchedule segfault
        "psutil",  # MetaSchedule needs these two; the apache-tvm wheel does not bring them
        "cloudpickle",
        "numpy",
        "torch>=2.4,<3",  # keep the user's own build (CUDA or CPU)
        "xgboost-cpu",  # MetaSchedule's cost model
        "tqdm",  # progress of tuning jobs and compiles
    ],
    # tornado: TVM's RPC tracker (tuning spread over machines, tested on localhost)
    extras_require={"test": ["pytest", "pytest-xdist", "hypothesis", "tornado"], "rpc": ["tornado"]},
    entry_points={"console_scripts": ["escoin=escoin_tvm.cli:main"]},
)
