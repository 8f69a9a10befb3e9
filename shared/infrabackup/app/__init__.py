"""The Azure Functions app: the triggers' bindings and the HTTP API."""
