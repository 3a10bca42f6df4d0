"""Only the optional native part of the build; everything else is in pyproject.toml.

protos/_merkle_native.c hashes a batch's Merkle leaves and nodes in one call each (the hub's
hottest loop; protos/merkle.py falls back to hashlib when it is not built). It needs a C
compiler, the Python headers and OpenSSL's (Debian: libssl-dev, which scripts/
install-build-deps.sh installs when it can); without them the install goes on without it.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "protos._merkle_native",
            ["protos/_merkle_native.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
