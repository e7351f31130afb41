"""Typed resources: where data lives, where questions come from, and which device trains."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field

from cv_pipeline.atomic import settled_dir
from cv_pipeline.sources.base import QuestionSource, SourceConfigError, SourceError

# The secrets and the environment variables they come from (never from run config: see StackExchangeResource).
SECRET_ENV = {"key": "STACKEXCHANGE_KEY", "access_token": "STACKEXCHANGE_ACCESS_TOKEN"}


class DataDirResource(dg.ConfigurableResource):
    """The one folder every output lives under (open formats only: JSON, Parquet, Arrow, safetensors, ...)."""

    path: str = Field(description="Root of the data directory (default ./data or $CV_PIPELINE_DATA_DIR).")

    def sub(self, *parts: str) -> Path:
        p = Path(self.path).joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def published(self, *parts: str) -> Path:
        """A folder that is replaced whole (the chat dataset, the evaluation report), as its last complete swap
        left it; not created here: an empty folder made in its place would hide one a killed swap set aside."""
        return settled_dir(Path(self.path).joinpath(*parts))

    def raw_batch_file(self, partition_key: str) -> Path:
        return self.sub("raw") / f"questions_{partition_key}.json"

    def cleaned_file(self, partition_key: str) -> Path:
        return self.sub("cleaned") / f"pairs_{partition_key}.parquet"

    def base_model_home(self) -> Path:
        """Where `base_model` converts or downloads the model (a local folder is only recorded here)."""
        return self.sub("models") / "base"

    def base_model_dir(self) -> Path:
        """The folder training, evaluation and export load the base model from."""
        from cv_pipeline.training.base_model import base_model_dir

        return base_model_dir(self.base_model_home())


class StackExchangeResource(dg.ConfigurableResource):
    """Opens the configured question source. Key and token arrive from the environment (dg.EnvVar) only."""

    source: Literal["sample_site", "api", "dump"] = Field(description="Which implementation to use.")
    site: str = Field("stats", description="Stack Exchange site name.")
    api_base_url: str = Field("https://api.stackexchange.com/2.3", description="API root (source=api).")
    # repr=False: the resource an asset receives never shows them when printed or logged.
    key: str | None = Field(
        None, repr=False,
        description="App key: raises the daily quota from 300 to 10,000. From the environment only: set STACKEXCHANGE_KEY "
        "(used automatically) or write {env: STACKEXCHANGE_KEY}; a key typed here would be stored in the run's config, "
        "so it is refused.",
    )
    access_token: str | None = Field(
        None, repr=False,
        description="Access token, optional. From the environment only, like key: STACKEXCHANGE_ACCESS_TOKEN.",
    )
    dump_path: str | None = Field(None, description="Posts.xml or the site archive (source=dump).")
    sample_site_questions: int = Field(10_000, description="Generated corpus size (source=sample_site).")
    sample_site_seed: int = Field(0, description="Generated corpus seed (source=sample_site).")
    keep_all_answers: bool = Field(False, description="Keep every answer, not only the highest-voted one.")
    requests_per_second: float = Field(10.0, description="Request ceiling; Stack Exchange bans above 30/s.")

    def __repr_args__(self):  # type: ignore[override]
        # A user:password in api_base_url (from the environment) is shown without its userinfo, as the source does.
        from cv_pipeline.sources.api import _without_userinfo, redact_url_secrets

        for name, value in super().__repr_args__():
            if name == "api_base_url" and isinstance(value, str):
                value = redact_url_secrets(_without_userinfo(value))  # parsed: a password may hold anything
            yield name, value

    @contextlib.contextmanager
    def open(self, work_dir: Path | None = None) -> Iterator[QuestionSource]:
        """The source, open. ``work_dir`` (source=dump): where the dump's ranking and a .7z archive's
        extracted Posts.xml are kept, so that each partition's run does not rank or extract it again."""
        self._check_secrets_came_from_the_environment()
        if self.source == "dump":
            from cv_pipeline.sources.dump import DumpSource

            if not self.dump_path:
                raise SourceError(
                    "source=dump needs dump_path: set it to the Posts.xml (or the archive) of the site's data dump"
                )
            with DumpSource(
                Path(self.dump_path),
                site=self.site,
                keep_all_answers=self.keep_all_answers,
                cache_dir=work_dir / "ranking" if work_dir else None,
                extract_dir=work_dir / "extracted" if work_dir else None,
            ) as src:
                yield src
            return
        with contextlib.ExitStack() as stack:
            base_url, label = self.api_base_url, "api"
            if self.source == "sample_site":
                from cv_pipeline.sources.sample_site import SampleSite

                site = stack.enter_context(SampleSite(n_questions=self.sample_site_questions, seed=self.sample_site_seed))
                base_url = site.base_url
                label = f"sample_site n={self.sample_site_questions} seed={self.sample_site_seed}"
            from cv_pipeline.sources.api import StackExchangeAPISource

            src = stack.enter_context(
                StackExchangeAPISource(
                    site=self.site,
                    base_url=base_url,
                    key=self.key,
                    access_token=self.access_token,
                    keep_all_answers=self.keep_all_answers,
                    requests_per_second=self.requests_per_second,
                    label=label,
                )
            )
            yield src

    def _check_secrets_came_from_the_environment(self) -> None:
        # Dagster stores a run's config as written: a value typed into the launchpad would sit in plain text in
        # the run history. A value that came through {env: NAME} is, by construction, some variable's value.
        values = set(os.environ.values())
        for name in ("key", "access_token"):
            if getattr(self, name) and getattr(self, name) not in values:
                raise SourceConfigError(
                    f"stackexchange.{name} was written into the run config, where Dagster keeps it in plain text: "
                    f"set it in the environment ({SECRET_ENV[name]}) and leave the field unset, or write "
                    f"{{env: {SECRET_ENV[name]}}} (delete that run if the value was real)"
                )
        if self.source == "api" and "@" in urlsplit(self.api_base_url).netloc and self.api_base_url not in values:
            raise SourceConfigError(
                "stackexchange.api_base_url carries a user name or password (user:password@host), and Dagster keeps "
                "run config in plain text: put the whole URL in an environment variable and write {env: NAME} "
                "(delete that run if the password was real)"
            )


class GPUResource(dg.ConfigurableResource):
    """Decides device, precision and memory limits for training and evaluation, and says what it found."""

    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto",
        description="'auto' takes CUDA when present, else the CPU. To train on the CPU of a machine with a GPU, also hide "
        "the GPU from the step (CUDA_VISIBLE_DEVICES empty): Unsloth picks its GPU code when it sees one, so training refuses.",
    )
    max_memory_gb: float | None = Field(
        None,
        description="Cap on the GPU memory this step's process may use (GB; CUDA only): an over-large batch then fails "
        "fast with out-of-memory advice instead of starving a neighbour. Unset: no cap.",
    )
    load_in_4bit: bool = Field(True, description="4-bit QLoRA on CUDA (needs bitsandbytes); ignored on the CPU.")

    def info(self):
        import dataclasses

        from cv_pipeline.training.device import detect_device

        found = detect_device(prefer=self.device, max_memory_gb=self.max_memory_gb)
        if not self.load_in_4bit:  # 16-bit LoRA on the GPU when asked for
            found = dataclasses.replace(found, four_bit_available=False)
        return found
