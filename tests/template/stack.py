"""The stack as tests see it: template.yaml transformed by samtranslator, rendered for one parameter set,
and deployed into moto's CloudFormation.

`deploy_stack(endpoint, parameters)` is the entry point for tests that run the handlers against the
resources a deployed stack created (names and URLs come from its Outputs, never hard-coded).
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's default account
STACK_NAME = "ownpage-sync-test"
CODE_BUCKET = "ownpage-sync-artifacts"

# Placeholders in the shape the template's AllowedPattern accepts.
OWNPAGE_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:ownpage-sync/ownpage-AbCdEf"
SOURCE_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:ownpage-sync/source-GhIjKl"

DYNAMODB_PARAMETERS: dict[str, str] = {
    "OwnpageListId": "4242",
    "OwnpageSecretArn": OWNPAGE_SECRET,
    "SourceKind": "dynamodb",
    "SourceTableName": "subscribers",
    "SourceEmailIndex": "by-email",
    "SourceSubscribedAttribute": "newsletter",
    "SourceGuidAttribute": "customer_id",
    "SourceConsentAttribute": "consented_at",
    "SourceDataAttributes": "firstname=first_name,city=town",
    "AlarmEmail": "oncall@example.com",
}

# The DynamoDB set with the fast lane's stream consumer on (the source table's stream).
SOURCE_STREAM = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/subscribers/stream/2025-03-01T06:00:00.000"
STREAM_PARAMETERS: dict[str, str] = {**DYNAMODB_PARAMETERS, "SourceStreamArn": SOURCE_STREAM}

SQL_PARAMETERS: dict[str, str] = {
    "OwnpageListId": "4242",
    "OwnpageSecretArn": OWNPAGE_SECRET,
    "SourceKind": "postgresql",
    "SourceSecretArn": SOURCE_SECRET,
    "SourceQuery": "SELECT email, guid, consented_at, first_name AS data_firstname FROM subscribers WHERE optin",
    "SubnetIds": "subnet-0123456789abcdef0,subnet-0fedcba9876543210",
    "SecurityGroupIds": "sg-0123456789abcdef0",
    "ScheduleState": "ENABLED",
}

# The artifact each code-carrying resource is deployed from (an s3:// placeholder for the translator).
_CODE = {
    "SyncFunction": ("CodeUri", "functions/sync.zip"),
    "RetryFunction": ("CodeUri", "functions/retry.zip"),
    "ChangeFunction": ("CodeUri", "functions/change.zip"),
    "OwnpageSyncLayer": ("ContentUri", "layers/ownpage_sync.zip"),
}


def load_sam_template() -> dict[str, Any]:
    """template.yaml as a dict, short-form intrinsics (!Ref, !Sub...) expanded."""
    from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

    template: dict[str, Any] = yaml_parse(TEMPLATE.read_text())
    return template


class _NoManagedPolicies:
    """The template names no managed policies through SAM; the translator must not ask IAM for any."""

    def load(self) -> dict[str, str]:
        return {}


def transform(parameters: Mapping[str, str], bucket: str = CODE_BUCKET) -> dict[str, Any]:
    """The CloudFormation template SAM would deploy, code locations replaced by s3:// placeholders."""
    from samtranslator.translator.transform import transform as sam_transform  # type: ignore[import-untyped]

    template = load_sam_template()
    for logical_id, (prop, key) in _CODE.items():
        template["Resources"][logical_id]["Properties"][prop] = f"s3://{bucket}/{key}"
    # The translator reads the region from a boto3 session; module-scoped fixtures run before the
    # per-test AWS sandbox, so make sure one is set (and leave the environment as it was).
    previous = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = REGION
    try:
        result: dict[str, Any] = sam_transform(template, dict(parameters), _NoManagedPolicies())
    finally:
        if previous is None:
            del os.environ["AWS_DEFAULT_REGION"]
        else:
            os.environ["AWS_DEFAULT_REGION"] = previous
    return result


# --- Rendering: resolve intrinsics for one parameter set, so tests assert on plain values ------------

NO_VALUE = object()


class Rendered:
    """A transformed template with conditions evaluated and intrinsics resolved for one parameter set.

    References to resources resolve to what CloudFormation would return, in a predictable shape:
    a queue's Ref is its URL, an Arn attribute is an ARN built from the logical id, and so on.
    """

    def __init__(self, cfn: Mapping[str, Any], parameters: Mapping[str, str], stack_name: str = STACK_NAME):
        self.cfn = cfn
        self.stack_name = stack_name
        self.parameters: dict[str, str] = {
            name: str(spec["Default"]) for name, spec in cfn.get("Parameters", {}).items() if "Default" in spec
        }
        self.parameters.update(parameters)
        self.pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::Partition": "aws",
            "AWS::StackName": stack_name,
            "AWS::URLSuffix": "amazonaws.com",
        }
        self._conditions: dict[str, bool] = {}
        self.conditions = {name: self.condition(name) for name in cfn.get("Conditions", {})}
        # Properties are resolved lazily: resolving one may need another resource's (e.g. a queue name).
        self._raw = {
            logical_id: resource
            for logical_id, resource in cfn["Resources"].items()
            if "Condition" not in resource or self.condition(resource["Condition"])
        }
        self.resources: dict[str, dict[str, Any]] = {
            logical_id: {"Type": resource["Type"], "Properties": self.resolve(resource.get("Properties", {}))}
            for logical_id, resource in self._raw.items()
        }
        self.outputs = {
            name: self.resolve(output["Value"])
            for name, output in cfn.get("Outputs", {}).items()
            if "Condition" not in output or self.condition(output["Condition"])
        }

    # -- queries ----------------------------------------------------------------------------------------
    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {lid: r["Properties"] for lid, r in self.resources.items() if r["Type"] == resource_type}

    def props(self, logical_id: str) -> dict[str, Any]:
        return self.resources[logical_id]["Properties"]

    def logical_id_starting(self, prefix: str, resource_type: str) -> str:
        """SAM suffixes some logical ids with a hash (layer versions); find one by its prefix."""
        found = [lid for lid, r in self.resources.items() if lid.startswith(prefix) and r["Type"] == resource_type]
        assert len(found) == 1, f"expected one {resource_type} named {prefix}*, found {found}"
        return found[0]

    def arn(self, logical_id: str) -> str:
        return str(self.get_att(logical_id, "Arn"))

    def ref(self, logical_id: str) -> str:
        return str(self.resolve({"Ref": logical_id}))

    # -- intrinsics -------------------------------------------------------------------------------------
    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = bool(self.resolve(self.cfn["Conditions"][name]))
        return self._conditions[name]

    def physical_name(self, logical_id: str) -> str:
        resource = self._raw[logical_id]
        props = resource.get("Properties", {})
        for key in (
            "QueueName",
            "TableName",
            "FunctionName",
            "TopicName",
            "LogGroupName",
            "DashboardName",
            "AlarmName",
            "Name",
        ):
            if key in props:
                return str(self.resolve(props[key]))
        return f"{self.stack_name}-{logical_id}"

    def get_att(self, logical_id: str, attribute: str) -> Any:
        resource_type = self._raw[logical_id]["Type"]
        name = self.physical_name(logical_id)
        service = resource_type.split("::")[1].lower()
        if attribute == "QueueName":
            return name
        if attribute == "Arn":
            return {
                "AWS::SQS::Queue": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}",
                "AWS::DynamoDB::Table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}",
                "AWS::Lambda::Function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}",
                "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/{name}",
                "AWS::Logs::LogGroup": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{name}:*",
                "AWS::KMS::Key": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{logical_id}",
                "AWS::CloudWatch::Alarm": f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}",
            }.get(resource_type, f"arn:aws:{service}:{REGION}:{ACCOUNT}:{name}")
        return f"{logical_id}.{attribute}"

    def ref_value(self, logical_id: str) -> Any:
        if logical_id in self.parameters:
            return self.parameters[logical_id]
        if logical_id in self.pseudo:
            return self.pseudo[logical_id]
        if logical_id == "AWS::NoValue":
            return NO_VALUE
        resource_type = self._raw[logical_id]["Type"]
        name = self.physical_name(logical_id)
        if resource_type == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}"
        if resource_type in ("AWS::SNS::Topic", "AWS::Lambda::LayerVersion"):
            return self.get_att(logical_id, "Arn")
        return name

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [value for value in (self.resolve(item) for item in node) if value is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self.ref_value(arg)
            if key == "Fn::GetAtt":
                logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(logical_id, attribute)
            if key == "Fn::If":
                name, when_true, when_false = arg
                return self.resolve(when_true if self.condition(name) else when_false)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Equals":
                left, right = (self.resolve(part) for part in arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(part) for part in arg)
            if key == "Fn::Or":
                return any(self.resolve(part) for part in arg)
            if key == "Fn::FindInMap":
                mapping, top, second = (str(self.resolve(part)) for part in arg)
                return self.cfn["Mappings"][mapping][top][second]
            if key == "Fn::Split":
                separator, value = arg
                return str(self.resolve(value)).split(separator)
            if key == "Fn::Join":
                separator, values = arg
                return separator.join(str(v) for v in self.resolve(values))
            if key == "Fn::Select":
                index, values = arg
                return self.resolve(values)[int(self.resolve(index))]
            if key == "Fn::Sub":
                return self._sub(arg)
        return {k: v for k, v in ((k, self.resolve(v)) for k, v in node.items()) if v is not NO_VALUE}

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        local = {name: self.resolve(value) for name, value in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in local:
                return str(local[name])
            if "." in name and name.split(".", 1)[0] in self._raw:
                logical_id, attribute = name.split(".", 1)
                return str(self.get_att(logical_id, attribute))
            return str(self.ref_value(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)


def render(parameters: Mapping[str, str]) -> Rendered:
    """Transform template.yaml for `parameters` and resolve it."""
    return Rendered(transform(parameters), parameters)


# --- Deployment into moto's CloudFormation -----------------------------------------------------------


def _zip(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _upload_code(s3: Any, bucket: str) -> None:
    """moto's Lambda reads function and layer code from its S3: upload the real sources (never run)."""
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    library = ROOT / "layers" / "ownpage_sync"
    layer = {
        f"python/{path.relative_to(library)}": path.read_bytes()
        for path in sorted(library.rglob("*.py"))
        if "__pycache__" not in path.parts
    }
    s3.put_object(Bucket=bucket, Key=_CODE["OwnpageSyncLayer"][1], Body=_zip(layer))
    for function in ("sync", "retry", "change"):
        handler = ROOT / "functions" / function / "app.py"
        body = _zip({"app.py": handler.read_bytes() if handler.exists() else b"def handler(event, context): ...\n"})
        s3.put_object(Bucket=bucket, Key=f"functions/{function}.zip", Body=body)


def _for_moto(template: dict[str, Any]) -> dict[str, Any]:
    """Work around moto's CloudFormation where it differs from AWS; each change says why.

    - moto turns a Number parameter into an int, so `!FindInMap [RetryTimeouts, !Ref RetryTimeout, ...]`
      looks up 300 in a mapping whose keys are strings ("300") and fails. AWS passes the string.
      The parameter is declared String here; its AllowedValues still hold.
    """
    template = copy.deepcopy(template)
    template["Parameters"]["RetryTimeout"]["Type"] = "String"
    template["Parameters"]["RetryTimeout"]["AllowedValues"] = [
        str(v) for v in template["Parameters"]["RetryTimeout"]["AllowedValues"]
    ]
    template["Parameters"]["RetryTimeout"]["Default"] = str(template["Parameters"]["RetryTimeout"]["Default"])
    return template


def deploy_stack(
    endpoint: str, parameters: Mapping[str, str] = DYNAMODB_PARAMETERS, stack_name: str | None = None
) -> dict[str, str]:
    """Transform template.yaml, deploy it into the moto server at `endpoint`, return the stack's Outputs.

    moto's CloudFormation skips resource types it does not implement (the Scheduler schedule, the
    alarms, the SNS e-mail subscription): those are proved on the transformed template instead.
    """
    stack_name = stack_name or f"ownpage-sync-{uuid.uuid4().hex[:8]}"
    bucket = f"{CODE_BUCKET}-{uuid.uuid4().hex[:8]}"
    # moto accepts any credentials; explicit ones let module-scoped fixtures deploy before the per-test
    # sandbox sets the environment's.
    session = boto3.session.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    _upload_code(session.client("s3", endpoint_url=endpoint), bucket)
    template = _for_moto(transform(parameters, bucket=bucket))
    cloudformation = session.client("cloudformation", endpoint_url=endpoint)
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    cloudformation.get_waiter("stack_create_complete").wait(
        StackName=stack_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    outputs = {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}
    outputs.setdefault("StackName", stack_name)
    return outputs


def stack_resources(endpoint: str, stack_name: str) -> dict[str, dict[str, str]]:
    """Logical id -> {type, physical id} of a deployed stack."""
    session = boto3.session.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    cloudformation = session.client("cloudformation", endpoint_url=endpoint)
    summaries = cloudformation.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
    # moto lists the resources it skipped (unsupported types) without ids: leave them out.
    return {
        r["LogicalResourceId"]: {"type": r["ResourceType"], "physical_id": r.get("PhysicalResourceId", "")}
        for r in summaries
        if r.get("LogicalResourceId")
    }


def copy_parameters(base: Mapping[str, str], **changes: str) -> dict[str, str]:
    """A parameter set derived from another one."""
    result = copy.deepcopy(dict(base))
    result.update(changes)
    return result


def function_environment(endpoint: str, function_name: str) -> dict[str, str]:
    """The environment a deployed function would run with: what a test sets before calling its handler."""
    session = boto3.session.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    configuration = session.client("lambda", endpoint_url=endpoint).get_function_configuration(
        FunctionName=function_name
    )
    variables: dict[str, str] = configuration.get("Environment", {}).get("Variables", {})
    return variables


def in_process_invoker(endpoint: str) -> Any:
    """A stand-in for `ownpage_sync_tools.remote.invoke_function`: moto cannot invoke a Lambda function
    (it needs Docker), so the SyncFunction's real handler runs here, in-process, with the environment
    moto holds for the invoked function. Its log lines go where Lambda's would (not to the terminal);
    the event and the payload make the JSON round trip Lambda's do, errors included."""
    import logging
    from contextlib import redirect_stdout

    from ownpage_sync.observability import logger
    from ownpage_sync_tools.lambda_local import LocalContext, load_function
    from ownpage_sync_tools.remote import Invocation
    from ownpage_sync_tools.stack_config import deployed_environment

    calls: list[dict[str, Any]] = []
    lambda_logs = io.StringIO()  # CloudWatch, as far as this test is concerned

    def invoke(function_name: str, event: Any) -> Invocation:
        received = json.loads(json.dumps(event))
        calls.append({"function_name": function_name, "event": received})
        handler = load_function("sync").handler
        streams = [h for h in logging.getLogger(logger.name).handlers if isinstance(h, logging.StreamHandler)]
        previous = [h.setStream(lambda_logs) for h in streams]
        try:
            with deployed_environment(function_environment(endpoint, function_name)), redirect_stdout(lambda_logs):
                result = handler(received, LocalContext(function_name=function_name))
        except Exception as exc:
            error = {"errorType": type(exc).__name__, "errorMessage": str(exc)}
            return Invocation(json.dumps(error).encode(), "Unhandled")
        finally:
            for stream_handler, stream in zip(streams, previous, strict=True):
                if stream is not None:
                    stream_handler.setStream(stream)
        return Invocation(json.dumps(result).encode())

    invoke.calls = calls  # type: ignore[attr-defined]
    invoke.logs = lambda_logs  # type: ignore[attr-defined]
    return invoke


def deploy_for_emulator(
    endpoint: str, ownpage_url: str, stack_name: str, items: Any, secret_name: str | None = None
) -> dict[str, str]:
    """What docs/deploy.md does, on moto: an Ownpage secret (demo credentials), a DynamoDB source table
    holding `items`, and the stack deployed for them with Ownpage at `ownpage_url` (the emulator).

    The stack's RetryQueue trigger is removed: moto would hand its messages to a Docker Lambda runner."""
    from ownpage_sync_tools.localstack import DEMO_CREDENTIALS, aws_client, create_source_table, seed_source

    secret_arn = aws_client(endpoint, "secretsmanager").create_secret(
        Name=secret_name or f"{stack_name}/ownpage", SecretString=json.dumps(DEMO_CREDENTIALS)
    )["ARN"]
    table = f"{stack_name}-subscribers"
    create_source_table(aws_client(endpoint, "dynamodb"), table)
    seed_source(endpoint, table, items)
    parameters = copy_parameters(
        DYNAMODB_PARAMETERS,
        OwnpageListId="1",
        OwnpageSecretArn=secret_arn,
        OwnpageApiUrl=ownpage_url,
        SourceTableName=table,
        SourceGuidAttribute="user_id",
        SourceDataAttributes="firstname=first_name,city=city",
    )
    parameters.pop("SourceEmailIndex")
    outputs = deploy_stack(endpoint, parameters, stack_name=stack_name)
    awslambda = aws_client(endpoint, "lambda")
    for mapping in awslambda.list_event_source_mappings(FunctionName=outputs["RetryFunctionName"])[
        "EventSourceMappings"
    ]:
        awslambda.delete_event_source_mapping(UUID=mapping["UUID"])
    return outputs
