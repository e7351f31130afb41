"""The one thing pyproject.toml cannot say: the cleaner's optional C extension (see cleaner.py).

`optional=True`: without a C compiler the install still succeeds and the pure-Python cleaner runs.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cv_pipeline.curation._fastclean",
            ["cv_pipeline/curation/_fastclean.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wno-implicit-fallthrough"],
            libraries=["dl"],
            optional=True,
        )
    ]
)
