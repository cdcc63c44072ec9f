#!/usr/bin/env bash
# Regenerate grpc_service_pb2.py/.pyi and model_config_pb2.py/.pyi from the .proto files beside
# this script (Triton's OIP v2 gRPC protocol, package `inference`, byte for byte the files that
# tritonclient 2.73 was built from: triton-inference-server/common, protobuf/, commit 83adf7c).
#
#   bash mlplat/serving/oip_grpc/regenerate.sh            # PYTHON=... to pick the interpreter
#
# grpcio-tools goes into a throwaway directory, never into the project's environment: mlplat has
# no runtime dependency on it. 1.75.1 emits protobuf 6.31.1 gencode, which loads under protobuf
# 6.31.1 up to 7.x (the runtime accepts gencode one major version older), so the files work with
# both the protobuf that Ray 2.60 resolves today (7.x) and an environment pinned to 6.x.
# Keep the .proto files identical to tritonclient's: two files that define the same `inference.*`
# messages differently cannot both load into one process (protobuf's default descriptor pool).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
"$python" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --target "$tools" "grpcio-tools==1.75.1"
PYTHONPATH="$tools" "$python" -m grpc_tools.protoc -I"$here" --python_out="$here" --pyi_out="$here" \
  "$here/grpc_service.proto" "$here/model_config.proto"
# protoc writes top-level imports; the package needs absolute ones
sed -i 's/^import model_config_pb2 as /from mlplat.serving.oip_grpc import model_config_pb2 as /' \
  "$here/grpc_service_pb2.py" "$here/grpc_service_pb2.pyi"
# the classes' __module__: Serve's gRPC proxy pickles each request message to the replica
sed -i -E "s/BuildTopDescriptorsAndMessages\(DESCRIPTOR, '(grpc_service|model_config)_pb2'/BuildTopDescriptorsAndMessages(DESCRIPTOR, 'mlplat.serving.oip_grpc.\1_pb2'/" \
  "$here/grpc_service_pb2.py" "$here/model_config_pb2.py"
for f in grpc_service_pb2.py grpc_service_pb2.pyi model_config_pb2.py model_config_pb2.pyi; do
  sed -i '1i # ruff: noqa\n# mypy: ignore-errors' "$here/$f"  # generated: not linted
done
echo "regenerated: $(cd "$here" && ls ./*_pb2.py ./*_pb2.pyi | tr '\n' ' ')"
