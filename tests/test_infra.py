"""infra/: the Bicep parses, passes checkov, and deploys what the issue asks for.

Given the Bicep under infra/, when scripts/check-infra.sh runs, then every file parses
with pycep-parser and checkov reports no finding. Then, on the parsed files, the tests
check the content: five alert rules carrying the seed texts of shared/infrabackup/alerts.py and a
sixth, "No successful backup", each with the query tests/kusto assembles (and
tests/test_alert_queries.py checks and runs), the action group's receivers, the Key
Vault's RBAC mode, every setting of the brief as an app
setting (and that the example parameters give settings the app accepts), the share
password as a Key Vault reference, and the identity's roles.

pycep-parser and checkov live in their own venv (.venv-infra, created by the script on
first use), so the files are parsed there and handed over as JSON.

pycep gives a Bicep identifier and a string literal alike as a Python string; the small
evaluator below treats a string as a reference when it names a parameter, variable or
known module output in scope, and as a literal otherwise, and raises on any expression it
does not know, so a change it cannot follow fails the test instead of passing it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from infrabackup.alerts import NO_SUCCESSFUL_BACKUP, Alert
from infrabackup.settings import ALL_SETTINGS, load_settings
from infrabackup.staleness import threshold
from tests.kusto import rule_query, workbook_content

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
SCRIPT = ROOT / "scripts" / "check-infra.sh"
# The script's venv (INFRA_VENV overrides it, as in scripts/check-infra.sh).
INFRA_PYTHON = Path(os.environ.get("INFRA_VENV", ROOT / ".venv-infra")) / "bin" / "python"

# Built-in role definition ids, as Azure publishes them.
KEY_VAULT_READER = "21090545-7ca7-4776-b22c-e363652d74d2"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
KEY_VAULT_CERTIFICATE_USER = "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"

ALERT_EVENT = "InfrastructureBackupAlert"
SUCCESS_EVENT = "InfrastructureBackupSucceeded"
HEARTBEAT_EVENT = "InfrastructureBackupHeartbeat"

# What the modules' outputs would be after a deployment, for evaluating app settings.
EXAMPLE_OUTPUTS = {
    "identity.outputs.id": "/subscriptions/0000/resourceGroups/rg/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/id-infrabackup-tok",
    "identity.outputs.clientId": "11111111-2222-3333-4444-555555555555",
    "storage.outputs.name": "stibtok",
    "storage.outputs.blobEndpoint": "https://stibtok.blob.core.windows.net/",
    "monitoring.outputs.applicationInsightsName": "appi-infrabackup-tok",
    "monitoring.outputs.applicationInsightsId": "/subscriptions/0000/resourceGroups/rg/providers/"
    "Microsoft.Insights/components/appi-infrabackup-tok",
    "keyVault.outputs.uri": "https://kv-ib-tok.vault.azure.net/",
    "keyVault.outputs.sharePasswordSecretUri": "https://kv-ib-tok.vault.azure.net/secrets/"
    "backup-share-password",
    "keyVault.outputs.legacyEncryptionKeySecretUri": "",
    "applicationInsights.properties.ConnectionString": "InstrumentationKey=00000000-0000-0000"
    "-0000-000000000000;IngestionEndpoint=https://eastus-8.in.applicationinsights.azure.com/",
}

_DUMP = """
import json, sys
from pathlib import Path
from pycep import BicepParser
root = Path(sys.argv[1])
parser = BicepParser()
out = {str(p.relative_to(root)): parser.parse(file_path=p) for p in sorted(root.rglob("*.bicep"))}
print(json.dumps(out, default=str))
"""


def run_check(folder: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = ["bash", str(SCRIPT)] + ([str(folder)] if folder else [])
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def check_run() -> subprocess.CompletedProcess[str]:
    """One run of the script on infra/ (it also creates .venv-infra when missing)."""
    return run_check()


@pytest.fixture(scope="module")
def bicep(check_run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """Every .bicep file under infra/, parsed by pycep, keyed by its path under infra/."""
    assert INFRA_PYTHON.exists(), check_run.stdout + check_run.stderr
    done = subprocess.run(
        [str(INFRA_PYTHON), "-c", _DUMP, str(INFRA)],
        capture_output=True, text=True, timeout=300, check=True,
    )
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


# --- a small evaluator for the Bicep expressions the settings use ---------------------


def unescape(text: str) -> str:
    """A Bicep single-quoted string's escapes, as pycep leaves them in its output."""
    escapes = {"\\": "\\", "'": "'", "n": "\n", "r": "\r", "t": "\t", "$": "$"}
    return re.sub(r"\\(.)", lambda m: escapes[m.group(1)], text)


class Scope:
    """Names visible to an expression: parameters, lazily evaluated variables, outputs."""

    def __init__(
        self,
        values: Mapping[str, Any],
        variables: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
        folder: Path = INFRA,
    ) -> None:
        self.values = dict(values)
        self.variables = dict(variables or {})
        self.outputs = dict(outputs or {})
        self.folder = folder  # loadTextContent() reads relative to the .bicep file

    def has(self, name: str) -> bool:
        return name in self.values or name in self.variables

    def get(self, name: str) -> Any:
        if name not in self.values:
            self.values[name] = evaluate(self.variables[name]["value"], self)
        return self.values[name]

    def path(self, dotted: str) -> Any:
        if dotted in self.outputs:
            return self.outputs[dotted]
        head, *rest = dotted.split(".")
        if not self.has(head):
            raise KeyError(f"unknown name {dotted!r}")
        value = self.get(head)
        for part in rest:
            value = value[part]
        return value


def _accessor_path(node: Any) -> str:
    if isinstance(node, str):
        return node
    operands = node["operator"]["operands"]
    return f"{_accessor_path(operands['operand_1'])}.{_accessor_path(operands['operand_2'])}"


def _to_string(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"  # ARM's string(true)
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _interpolate(text: str, scope: Scope) -> str:
    return re.sub(r"\$\{([^}]+)\}", lambda m: _to_string(scope.path(m.group(1).strip())), text)


def evaluate(node: Any, scope: Scope) -> Any:
    """The value of a pycep expression node; raises on anything it does not handle."""
    if isinstance(node, bool | int | float) or node is None:
        return node
    if isinstance(node, str):
        if "${" in node:
            return _interpolate(unescape(node), scope)
        if scope.has(node):
            return scope.get(node)
        return unescape(node)
    if isinstance(node, list):
        return [evaluate(item, scope) for item in node]
    if "operator" in node:
        op = node["operator"]
        kind, operands = op["type"], op["operands"]
        if kind == "property_accessor":
            return scope.path(_accessor_path(node))
        if kind == "conditional":
            chosen = "true_value" if evaluate(operands["condition"], scope) else "false_value"
            return evaluate(operands[chosen], scope)
        if kind == "not":
            return not evaluate(operands["bool_value"], scope)
        if kind == "greater_than":
            return evaluate(operands["operand_1"], scope) > evaluate(operands["operand_2"], scope)
        raise NotImplementedError(f"operator {kind}")
    if "function" in node:
        fn = node["function"]
        kind, params = fn["type"], fn["parameters"]
        handlers: dict[str, Callable[[], Any]] = {
            "string": lambda: _to_string(evaluate(params["value_to_convert"], scope)),
            "empty": lambda: not evaluate(params["item_to_test"], scope),
            "union": lambda: {
                k: v for arg in params.values() for k, v in evaluate(arg, scope).items()
            },
            "replace": lambda: evaluate(params["original_string"], scope).replace(
                evaluate(params["old_string"], scope), evaluate(params["new_string"], scope)
            ),
            "load_text_content": lambda: (scope.folder / params["file_path"]).read_text(
                encoding="utf-8"),
            "trim": lambda: evaluate(params["string_to_trim"], scope).strip(),
            "to_lower": lambda: evaluate(params["string_to_change"], scope).lower(),
        }
        if kind not in handlers:
            raise NotImplementedError(f"function {kind}")
        return handlers[kind]()
    return {unescape(key.strip("'")): evaluate(value, scope) for key, value in node.items()}


def resources_of_type(bicep: dict[str, Any], rtype: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, name, res)
        for path, tree in bicep.items()
        for name, res in tree.get("resources", {}).items()
        if res["type"] == rtype
    ]


def param_defaults(tree: dict[str, Any]) -> dict[str, Any]:
    """Parameters with a default (pycep gives ``None`` for a parameter without one)."""
    return {n: p["default"] for n, p in tree["parameters"].items() if p["default"] is not None}


def function_app_settings(
    bicep: dict[str, Any],
    overrides: Mapping[str, Any],
    outputs: Mapping[str, Any] = EXAMPLE_OUTPUTS,
) -> dict[str, str]:
    """The app settings infra/ gives the function app for main parameters ``overrides``.

    main.bicep's parameters (defaults, then ``overrides``) flow into the function-app
    module's parameters, and those into its ``appSettings`` variable; module outputs
    take the values of ``outputs``.
    """
    main, app = bicep["main.bicep"], bicep["app/function-app.bicep"]
    main_scope = Scope(
        {**param_defaults(main), **overrides, "resourceToken": "tok"},
        {k: v for k, v in main["variables"].items() if k != "resourceToken"},
        outputs,
    )
    module_params = main["modules"]["functionApp"]["config"]["params"]
    app_values = {**param_defaults(app)}
    app_values.update({name: evaluate(expr, main_scope) for name, expr in module_params.items()})
    missing = set(app["parameters"]) - set(app_values)
    assert not missing, f"function-app.bicep parameters without a value: {missing}"
    app_scope = Scope(app_values, app["variables"], outputs)
    settings = app_scope.get("appSettings")
    assert all(isinstance(v, str) for v in settings.values()), settings
    return dict(settings)


def example_parameters() -> dict[str, Any]:
    data = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    return {name: entry["value"] for name, entry in data["parameters"].items()}


# --- the script ------------------------------------------------------------------------


def test_check_infra_parses_every_file_and_checkov_finds_nothing(
    check_run: subprocess.CompletedProcess[str],
) -> None:
    out = check_run.stdout + check_run.stderr
    assert check_run.returncode == 0, out
    count = len(list(INFRA.rglob("*.bicep")))
    assert count >= 9
    assert f"pycep-parser: {count} of {count} files parsed" in out
    assert re.search(r"checkov: passed [1-9]\d*, failed 0, skipped \d+, parsing errors 0", out), out
    assert "check-infra: OK" in out


def test_check_infra_fails_on_a_file_that_does_not_parse(
    check_run: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy)
    with (copy / "app" / "storage.bicep").open("a", encoding="utf-8") as f:
        f.write("\nresource broken 'Microsoft.Storage/storageAccounts@2023-05-01' = {{ name: \n")

    done = run_check(copy)

    assert done.returncode != 0
    assert f"PARSE ERROR {copy / 'app' / 'storage.bicep'}" in done.stdout, done.stdout


def test_check_infra_fails_on_a_checkov_finding(
    check_run: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy)
    with (copy / "app" / "storage.bicep").open("a", encoding="utf-8") as f:
        f.write(
            "\nresource weak 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n"
            "  name: 'weakaccount'\n  location: location\n  kind: 'StorageV2'\n"
            "  sku: {\n    name: 'Standard_ZRS'\n  }\n"
            "  properties: {\n    supportsHttpsTrafficOnly: false\n  }\n}\n"
        )

    done = run_check(copy)

    assert done.returncode != 0
    assert "FAILED CKV_AZURE_3 " in done.stdout, done.stdout
    assert "storageAccounts.weak" in done.stdout


# --- alerts ----------------------------------------------------------------------------


def test_five_alert_rules_carry_each_seed_alerts_name_description_and_remediation(
    bicep: dict[str, Any],
) -> None:
    rules = resources_of_type(bicep, "Microsoft.Insights/scheduledQueryRules")
    assert [(path, name) for path, name, _ in rules] == [("app/alerts.bicep", "alertRules"),
                                                         ("app/alerts.bicep", "staleRule")]
    tree, rule = bicep["app/alerts.bicep"], rules[0][2]
    loop = rule["config"]["loop_type"]
    assert loop["type"] == "array"
    seeds = tree["variables"][loop["detail"]["array_name"]]["value"]
    assert len(seeds) == 5 == len(Alert)

    item = loop["detail"]["item_name"]
    for alert in Alert:
        matching = [s for s in seeds if unescape(s["name"]) == alert.title]
        assert len(matching) == 1, alert.title
        seed = {k: unescape(v) for k, v in matching[0].items()}
        assert seed["description"] == alert.description
        assert seed["remediation"] == alert.remediation

        rule_scope = Scope({item: seed}, tree["variables"], folder=INFRA / "app")
        props = rule["config"]["config"]["properties"]
        description = evaluate(props["description"], rule_scope)
        for text in (alert.title, alert.description, alert.remediation):
            assert text in description
        assert evaluate(props["displayName"], rule_scope) == alert.title
        # The deployed query is the one tests/test_alert_queries.py checks and runs.
        query = evaluate(props["criteria"]["allOf"][0]["query"], rule_scope)
        assert query == rule_query("failed", alert_name=alert.title)
        assert evaluate(props["actions"]["customProperties"], rule_scope) == {
            "alertName": alert.title,
            "description": alert.description,
            "remediation": alert.remediation,
        }


def alerts_scope(bicep: dict[str, Any], overrides: Mapping[str, Any]) -> Scope:
    """alerts.bicep's names for main parameters ``overrides`` (as main.bicep passes them)."""
    main, alerts = bicep["main.bicep"], bicep["app/alerts.bicep"]
    main_scope = Scope({**param_defaults(main), **overrides, "resourceToken": "tok"},
                       {k: v for k, v in main["variables"].items() if k != "resourceToken"},
                       EXAMPLE_OUTPUTS)
    given = main["modules"]["alerts"]["config"]["params"]
    values = {**param_defaults(alerts),
              **{name: evaluate(expr, main_scope) for name, expr in given.items()}}
    missing = set(alerts["parameters"]) - set(values)
    assert not missing, f"alerts.bicep parameters without a value: {missing}"
    return Scope(values, alerts["variables"], EXAMPLE_OUTPUTS, folder=INFRA / "app")


def test_a_sixth_rule_fires_when_no_backup_succeeded_and_carries_its_text(
    bicep: dict[str, Any],
) -> None:
    tree = bicep["app/alerts.bicep"]
    props = tree["resources"]["staleRule"]["config"]["properties"]
    text = {k: unescape(v) for k, v in tree["variables"]["staleAlert"]["value"].items()}
    assert (text["name"], text["description"], text["remediation"]) == (
        NO_SUCCESSFUL_BACKUP.title, NO_SUCCESSFUL_BACKUP.description,
        NO_SUCCESSFUL_BACKUP.remediation)

    # Mixed case in the parameters: the app lower-cases domain and region, so must the list.
    params = example_parameters() | {"externalDomain": "Contoso.COM", "stampRegion": "NYC",
                                     "scaleUnit": "s-cluster01"}
    scope = alerts_scope(bicep, params)
    assert evaluate(props["displayName"], scope) == NO_SUCCESSFUL_BACKUP.title
    description = evaluate(props["description"], scope)
    for part in (NO_SUCCESSFUL_BACKUP.description, NO_SUCCESSFUL_BACKUP.remediation):
        assert part in description
    assert evaluate(props["actions"]["customProperties"], scope) == {
        "alertName": NO_SUCCESSFUL_BACKUP.title,
        "description": NO_SUCCESSFUL_BACKUP.description,
        "remediation": NO_SUCCESSFUL_BACKUP.remediation,
    }
    assert props["autoMitigate"] is True and props["windowSize"] == "windowSize"
    criterion = props["criteria"]["allOf"][0]
    assert criterion["dimensions"][0]["name"] == "stamp"
    assert (criterion["operator"], criterion["threshold"]) == ("GreaterThan", 0)
    stamp = {"stampId": "default", "externalDomain": "contoso.com", "region": "nyc",
             "scaleUnit": "s-cluster01"}
    settings = load_settings(function_app_settings(bicep, params))
    assert {"stampId": settings.stamp_id, "externalDomain": settings.external_domain,
            "region": settings.region, "scaleUnit": settings.scale_unit} == stamp  # as sent
    assert evaluate(criterion["query"], scope) == rule_query(
        "stale", expected_stamps=[stamp], stale_after_hours=threshold(settings).hours)


@pytest.mark.parametrize(("hours", "setting", "rule_hours"), [(0, "", 25), (13, "13", 13)])
def test_the_stale_threshold_reaches_the_app_and_the_rule(
    bicep: dict[str, Any], hours: int, setting: str, rule_hours: int,
) -> None:
    params = example_parameters() | {"backupStaleAfterHours": hours}
    settings = function_app_settings(bicep, params)
    assert settings["BACKUP_STALE_AFTER_HOURS"] == setting
    assert threshold(load_settings(settings)).hours == rule_hours  # the app's own value
    assert alerts_scope(bicep, params).get("staleAfterHours") == rule_hours


def test_alert_rules_fire_on_the_latest_event_per_stamp_and_auto_resolve(
    bicep: dict[str, Any],
) -> None:
    tree = bicep["app/alerts.bicep"]
    props = tree["resources"]["alertRules"]["config"]["config"]["properties"]
    assert props["autoMitigate"] is True
    assert props["scopes"] == ["applicationInsightsId"]
    assert props["actions"]["actionGroups"] == [
        {"operator": {"type": "property_accessor",
                      "operands": {"operand_1": "actionGroup", "operand_2": "id"}}}
    ]
    criterion = props["criteria"]["allOf"][0]
    assert criterion["dimensions"][0]["name"] == "stamp"
    assert (criterion["operator"], criterion["threshold"]) == ("GreaterThan", 0)

    query = rule_query("failed", alert_name="x")
    assert f'"{ALERT_EVENT}"' in query and f'"{SUCCESS_EVENT}"' in query
    assert "let stampOf = (dimensions: dynamic)" in query
    for dimension in ("alertName", "lastBackupStatus", "lastBackupAlertName"):
        assert f"customDimensions.{dimension}" in query
    # The newest result of each stamp decides: a later success leaves no row, so it resolves.
    assert "summarize arg_max(timestamp, name, result, failedAlertName, customDimensions) " \
           "by stamp" in query
    # No datetime column in the result: the rule counts rows over its whole window.
    assert "lastEventTime = tostring(timestamp)" in query


def test_action_group_takes_email_and_webhook_receivers_from_parameters(
    bicep: dict[str, Any],
) -> None:
    groups = resources_of_type(bicep, "Microsoft.Insights/actionGroups")
    assert len(groups) == 1
    path, _, group = groups[0]
    tree = bicep[path]
    props = group["config"]["properties"]
    assert group["config"]["location"] == "global"
    for receivers, param in (("emailReceivers", "emailReceivers"),
                             ("webhookReceivers", "webhookReceivers")):
        loop = props[receivers]
        assert loop["loop_type"]["detail"]["array_name"] == param
        assert tree["parameters"][param]["type"] == "array"
    assert props["emailReceivers"]["config"]["emailAddress"] == "address"
    assert props["webhookReceivers"]["config"]["serviceUri"] == "url"
    main = bicep["main.bicep"]
    alert_params = main["modules"]["alerts"]["config"]["params"]
    assert alert_params["emailReceivers"] == "alertEmailReceivers"
    assert alert_params["webhookReceivers"] == "alertWebhookReceivers"
    assert main["parameters"]["alertEmailReceivers"]["type"] == "array"
    assert main["parameters"]["alertWebhookReceivers"]["type"] == "array"


def test_workbook_shows_backups_over_time_from_the_events_and_metrics(
    bicep: dict[str, Any],
) -> None:
    workbooks = resources_of_type(bicep, "Microsoft.Insights/workbooks")
    assert len(workbooks) == 1
    data = workbooks[0][2]["config"]["properties"]["serializedData"]
    scope = Scope({"applicationInsightsId": "__APPINSIGHTS_ID__"}, folder=INFRA / "app")
    content = json.loads(evaluate(data, scope))
    assert content == workbook_content()  # what tests/test_alert_queries.py checks
    queries = "\n".join(
        item["content"]["query"] for item in content["items"] if item["type"] == 3
    )
    for name in ("infrabackup.backup.duration", "infrabackup.backup.bytes_written",
                 "infrabackup.backup.throughput", "infrabackup.backup.result",
                 "infrabackup.share.free_bytes", ALERT_EVENT, SUCCESS_EVENT, HEARTBEAT_EVENT):
        assert f'"{name}"' in queries, name
    assert "customDimensions.alert)" in queries
    assert "__STAMP_KEY__" not in queries and "let stampOf" in queries
    assert content["fallbackResourceIds"] == ["__APPINSIGHTS_ID__"]


# --- Key Vault, app settings, identity --------------------------------------------------


def test_key_vault_uses_rbac_authorization(bicep: dict[str, Any]) -> None:
    vaults = [
        v for v in resources_of_type(bicep, "Microsoft.KeyVault/vaults") if not v[2]["existing"]
    ]
    assert len(vaults) == 1
    props = vaults[0][2]["config"]["properties"]
    assert props["enableRbacAuthorization"] is True
    assert "accessPolicies" not in props
    assert props["enablePurgeProtection"] is True


def test_app_settings_cover_every_setting_of_the_brief(bicep: dict[str, Any]) -> None:
    app = bicep["app/function-app.bicep"]
    settings = app["variables"]["appSettings"]["value"]
    for name in ALL_SETTINGS:
        if name == "AzureWebJobsStorage":
            # Identity-based form: shared keys are off on the storage account.
            assert settings["AzureWebJobsStorage__accountName"] == "storageAccountName"
            assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
            assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
        else:
            assert name in settings, name
    assert settings["AZURE_CLIENT_ID"] == "identityClientId"
    # The site gets the list built from union(extraAppSettings, appSettings): ours win.
    site = app["resources"]["site"]["config"]["properties"]
    assert site["siteConfig"]["appSettings"] == "appSettingsList"
    loop = app["variables"]["appSettingsList"]["value"]["loop_type"]["detail"]["object_name"]
    assert "'arg_1': 'extraAppSettings', 'arg_2': 'appSettings'" in loop
    assert site["keyVaultReferenceIdentity"] == "identityId"


def test_share_password_is_a_key_vault_reference_to_the_secret(bicep: dict[str, Any]) -> None:
    app, main, kv = (bicep[p] for p in ("app/function-app.bicep", "main.bicep",
                                         "app/keyvault.bicep"))
    value = app["variables"]["appSettings"]["value"]["BACKUP_SHARE_PASSWORD"]
    assert value == "@Microsoft.KeyVault(SecretUri=${sharePasswordSecretUri})"
    assert main["modules"]["functionApp"]["config"]["params"]["sharePasswordSecretUri"] == {
        "operator": {"type": "property_accessor", "operands": {
            "operand_1": "keyVault", "operand_2": {"operator": {
                "type": "property_accessor",
                "operands": {"operand_1": "outputs", "operand_2": "sharePasswordSecretUri"}}}}}
    }
    output = kv["outputs"]["sharePasswordSecretUri"]["value"]
    assert _accessor_path(output) == "sharePasswordSecret.properties.secretUri"
    secret = kv["resources"]["sharePasswordSecret"]["config"]
    assert secret["properties"]["value"] == "sharePassword"
    for tree in (main, kv):
        decorators = tree["parameters"]["sharePassword"]["decorators"]
        assert any(d["type"] == "secure" for d in decorators)


def test_example_parameters_give_settings_the_app_accepts(bicep: dict[str, Any]) -> None:
    params = example_parameters()
    settings = function_app_settings(bicep, params)

    assert settings["BACKUP_SHARE_PASSWORD"] == (
        "@Microsoft.KeyVault(SecretUri=https://kv-ib-tok.vault.azure.net/secrets/"
        "backup-share-password)"
    )
    assert settings["BACKUP_ENCRYPTION_CERT"] == (
        "https://kv-ib-tok.vault.azure.net/certificates/infrabackup-encryption"
    )
    assert settings["BACKUP_ENCRYPTION_KEY"] == ""
    assert settings["BACKUP_DECRYPTION_CERT"] == ""
    assert settings["BACKUP_DECRYPTION_CERT_PASSWORD"] == ""
    assert settings["AZURE_CLIENT_ID"] == EXAMPLE_OUTPUTS["identity.outputs.clientId"]

    loaded = load_settings(settings)
    loaded.require("BACKUP_SHARE_PATH", "BACKUP_EXTERNAL_DOMAIN", "BACKUP_REGION",
                   "BACKUP_ENCRYPTION_CERT", "BACKUP_SOURCES", "BACKUP_STAMP_VERSION")
    assert str(loaded.share_path) == params["sharePath"]
    assert loaded.share_port == params["sharePort"]
    assert loaded.share_require_encryption is params["shareRequireEncryption"]
    assert loaded.retention_days == params["retentionDays"]
    assert loaded.scheduler_enabled is params["schedulerEnabled"]
    assert [s.name for s in loaded.sources] == [s["name"] for s in params["backupSources"]]


def test_example_parameters_name_every_required_parameter(bicep: dict[str, Any]) -> None:
    main_params = bicep["main.bicep"]["parameters"]
    given = set(example_parameters())
    assert given <= set(main_params), given - set(main_params)
    required = set(main_params) - set(param_defaults(bicep["main.bicep"]))
    # The password is passed on the command line, never written in a file.
    assert required - given == {"sharePassword"}


def test_scheduler_off_and_legacy_key_reach_the_settings(bicep: dict[str, Any]) -> None:
    legacy_uri = "https://kv-ib-tok.vault.azure.net/secrets/backup-legacy-key"
    outputs = EXAMPLE_OUTPUTS | {"keyVault.outputs.legacyEncryptionKeySecretUri": legacy_uri}
    settings = function_app_settings(
        bicep,
        example_parameters() | {"schedulerEnabled": False, "scaleUnit": "s-cluster01"},
        outputs,
    )
    assert settings["BACKUP_SCHEDULER_ENABLED"] == "false"
    assert settings["BACKUP_SCALE_UNIT"] == "s-cluster01"
    assert settings["BACKUP_ENCRYPTION_KEY"] == legacy_uri
    assert settings["BACKUP_ENCRYPTION_CERT"] == ""


def test_identity_gets_only_its_five_least_privilege_roles(bicep: dict[str, Any]) -> None:
    tree = bicep["app/roles.bicep"]
    role_ids = tree["variables"]["roleIds"]["value"]
    assignments = resources_of_type(bicep, "Microsoft.Authorization/roleAssignments")
    assert {path for path, _, _ in assignments} == {"app/roles.bicep"}

    granted: dict[str, str] = {}
    for _, name, res in assignments:
        config = res["config"].get("config", res["config"])  # conditional resources nest
        props = config["properties"]
        role_fn = props["roleDefinitionId"]["function"]
        assert role_fn["type"] == "subscription_resource_id"
        role = role_ids[_accessor_path(role_fn["parameters"]["resource_name_1"]).split(".")[1]]
        assert config["name"]["function"]["type"] == "guid", name
        if props["principalId"] == "principalId":
            assert props["principalType"] == "ServicePrincipal"
            granted[name] = f"{role}@{config['scope']}"
        else:
            assert props["principalId"] == "operatorPrincipalId"
            assert res["config"]["condition"] is not None  # only when an operator is named

    assert sorted(granted.values()) == sorted([
        f"{KEY_VAULT_READER}@vault",
        f"{KEY_VAULT_SECRETS_USER}@sharePasswordSecret",
        f"{KEY_VAULT_SECRETS_USER}@legacyEncryptionKeySecret",
        f"{STORAGE_QUEUE_DATA_CONTRIBUTOR}@storage",
        f"{STORAGE_TABLE_DATA_CONTRIBUTOR}@storage",
        f"{STORAGE_BLOB_DATA_OWNER}@storage",
    ])
    # Certificate User (and Secrets User on the vault) could read the PFX's private key.
    assert KEY_VAULT_CERTIFICATE_USER not in role_ids.values()
    main_roles = bicep["main.bicep"]["modules"]["roles"]["config"]["params"]
    assert _accessor_path(main_roles["principalId"]) == "identity.outputs.principalId"


def test_function_app_runs_on_flex_consumption_as_the_user_assigned_identity(
    bicep: dict[str, Any],
) -> None:
    app = bicep["app/function-app.bicep"]["resources"]
    assert app["plan"]["config"]["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    site = app["site"]["config"]
    assert site["identity"]["type"] == "UserAssigned"
    assert site["properties"]["httpsOnly"] is True
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "pythonVersion"}
    assert config["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"
    storage = bicep["app/storage.bicep"]["resources"]["storage"]["config"]["properties"]
    assert storage["allowSharedKeyAccess"] is False


def test_parameters_are_described_outputs_named_and_names_use_the_resource_token(
    bicep: dict[str, Any],
) -> None:
    for path, tree in bicep.items():
        for name, param in tree.get("parameters", {}).items():
            assert any(d["type"] == "description" for d in param["decorators"]), (path, name)
        for name, output in tree.get("outputs", {}).items():
            assert any(d["type"] == "description" for d in output["decorators"]), (path, name)
    main = bicep["main.bicep"]
    assert len(main["outputs"]) >= 10
    for module, body in main["modules"].items():
        name = body["config"]["params"].get("name")
        if name is not None:
            assert "${resourceToken}" in name, module
