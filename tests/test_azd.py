"""azure.yaml: what `azd up` provisions and deploys, against the files it names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_azure_yaml_provisions_infra_and_deploys_this_folder_as_a_python_function() -> None:
    config = yaml.safe_load((REPO / "azure.yaml").read_text())
    assert config["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert config["services"] == {"api": {"project": ".", "language": "python",
                                          "host": "function"}}
    assert (REPO / "infra" / "main.bicep").is_file()
    # azd fills the ${AZURE_*} parameters in; the az way passes them on the command line.
    parameters = json.loads((REPO / "infra" / "main.parameters.json").read_text())["parameters"]
    assert parameters["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert parameters["location"]["value"] == "${AZURE_LOCATION}"
    readme = (REPO / "README.md").read_text()
    assert "azd up" in readme and "environmentName=" in readme
    # azd finds the app to deploy to by its service tag.
    app = (REPO / "infra" / "app" / "function-app.bicep").read_text()
    assert "'azd-service-name': 'api'" in app
    ignored = (REPO / ".funcignore").read_text().split()
    assert "azure.yaml" in ignored and ".azure/" in ignored


def test_infra_offers_the_python_the_worker_harness_runs() -> None:
    for path in ("infra/main.bicep", "infra/app/function-app.bicep"):
        allowed = re.search(r"@allowed\(\[\s*'3\.11'(.*?)\]\)\s*param pythonVersion",
                            (REPO / path).read_text(), re.S)
        assert allowed and "'3.13'" in allowed.group(1), path
