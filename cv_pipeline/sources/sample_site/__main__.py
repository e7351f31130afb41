"""``python -m cv_pipeline.sources.sample_site --port 8765 --questions 40000``"""

from cv_pipeline.sources.sample_site.server import main

main()
