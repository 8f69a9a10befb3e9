"""Azure Functions entry point: wires triggers to the ``shared`` package, nothing more."""

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
