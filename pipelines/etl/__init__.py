"""The ETL stage: three passes over the input (profile, fit, write), the outputs it writes
and what it records of them.
"""
