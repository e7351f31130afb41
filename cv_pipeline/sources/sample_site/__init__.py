"""The sample site: a Stack Exchange API 2.3-compatible server on 127.0.0.1 over a generated corpus.

It is the embedded default data source for the demo and the tests; the real API client talks to
it over loopback HTTP exactly as it would to the real API.
"""

from cv_pipeline.sources.sample_site.corpus import SampleCorpus
from cv_pipeline.sources.sample_site.filters import make_filter
from cv_pipeline.sources.sample_site.server import Faults, SampleSite

__all__ = ["Faults", "SampleCorpus", "SampleSite", "make_filter"]
