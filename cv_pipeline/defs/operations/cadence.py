"""How often the raw batches are re-collected, and when the UI calls them overdue."""

from datetime import timedelta

import dagster as dg

RESCRAPE_CRON = "0 3 * * 1"  # Mondays 03:00 UTC (the schedule `weekly_rescrape`)

# Shown as the asset's freshness in the UI and judged by the daemon (on by default in 1.13; dagster.yaml says so). Dagster 1.13
# judges a partitioned asset by its latest materialisation of any partition, so this catches re-scrapes
# that stopped (the schedule off, the daemon down, every run failing), not one partition left behind.
# A warning once a Monday's re-scrape is a day overdue; a failure when two in a row are missing.
RAW_BATCHES_FRESHNESS = dg.FreshnessPolicy.time_window(warn_window=timedelta(days=8), fail_window=timedelta(days=15))
