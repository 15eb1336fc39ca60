"""What people see and call: the command line, the terminal, progress, the HTML report,
MLflow, and the scikit-learn-style Estimator.
"""
