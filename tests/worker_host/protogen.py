"""Python stubs of the Functions host protocol, generated from the descriptors a wheel ships.

    python protogen.py SRC OUT

SRC is the ``tests/protos`` folder of the ``azure-functions-runtime-v1`` wheel: the
protocol (FunctionRpc.proto and the two files it imports) compiled to ``*_pb2.py``
modules. The ``.proto`` sources are not in the wheel, but each module embeds its
serialized FileDescriptorProto; this reads those bytes from the source text (``ast``,
nothing of the wheel is executed) and compiles them again with ``grpc_tools.protoc
--descriptor_set_in`` for the protobuf runtime installed here. The wheel's own modules
are generated code of an older protobuf (no runtime version check) and import as a
top-level ``tests`` package, which this repository already has.

The files are renamed under the package :data:`PACKAGE` (``azfrpc/FunctionRpc.proto``,
``azfrpc/shared/NullableTypes.proto``...): protoc turns a file's folder into its
import path, and the protocol's ``shared`` folder would otherwise shadow the app's
``shared`` package. Names on the wire (``AzureFunctionsRpcMessages.FunctionRpc``) are
the proto package's and do not change.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2, duration_pb2, timestamp_pb2
from grpc_tools import protoc

PACKAGE = "azfrpc"
#: The generated modules of the wheel, dependencies first.
MODULES = ("shared/NullableTypes_pb2.py", "identity/ClaimsIdentityRpc_pb2.py",
           "FunctionRpc_pb2.py")


def serialized_descriptor(module: Path) -> bytes:
    """The bytes passed to ``AddSerializedFile`` in a generated ``*_pb2.py``."""
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile" and node.args):
            value = ast.literal_eval(node.args[0])
            if isinstance(value, bytes):
                return value
    raise SystemExit(f"protogen: no serialized descriptor in {module}")


def _renamed(name: str) -> str:
    return name if name.startswith("google/") else f"{PACKAGE}/{name}"


def main(src: Path, out: Path) -> int:
    descriptors = descriptor_pb2.FileDescriptorSet()
    for well_known in (duration_pb2, timestamp_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        well_known.DESCRIPTOR.CopyToProto(proto)
        descriptors.file.append(proto)
    names = []
    for module in MODULES:
        proto = descriptor_pb2.FileDescriptorProto.FromString(serialized_descriptor(src / module))
        proto.name = _renamed(proto.name)
        proto.dependency[:] = [_renamed(d) for d in proto.dependency]
        descriptors.file.append(proto)
        names.append(proto.name)
    out.mkdir(parents=True, exist_ok=True)
    descriptor_set = out / "functionrpc.pb"
    descriptor_set.write_bytes(descriptors.SerializeToString())
    status = protoc.main(["protoc", f"--descriptor_set_in={descriptor_set}",
                          f"--python_out={out}", f"--grpc_python_out={out}", *names])
    if status != 0:
        print(f"protogen: protoc failed ({status})", file=sys.stderr)
        return 1
    for folder in {out / Path(name).parent for name in names}:
        (folder / "__init__.py").touch()
    print(f"protogen: {', '.join(names)} -> {out / PACKAGE}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
