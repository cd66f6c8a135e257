"""The pipeline's stages: ingest (with the chest rule), worker, results, retraining and its schedule,
and the training-data export. They meet only through committed database state.
"""
