"""The code MLflow stores as a table run's model ("models from code"): loading it builds a `TableRowsModel`.

Passing the model object itself would make MLflow pickle it with CloudPickle (and warn that unpickling may run
arbitrary code); this file is copied into the model instead and run when the model is loaded.
"""

from mlflow.models import set_model

from taktstock.tracking.mlflow_table_model import TableRowsModel

set_model(TableRowsModel())
