import dagster as dg

from cv_pipeline.partitions import partition_keys

#: 5,000 questions per partition, by rank: 00000-04999, 05000-09999, ... (8 cover the report's 39,668).
question_ranges = dg.StaticPartitionsDefinition(partition_keys())
