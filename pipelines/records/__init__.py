"""A run's records: its directory (RunDir), the manifest and the ETL summary as types, the
models' files, the stage keys, and who owns a run.
"""
