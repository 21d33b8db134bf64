#!/usr/bin/env bash
# Generates Python code and .pyi stubs for protos/ into the personalization package
# (proto package personalization.v1 -> Python package personalization.v1).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
out="$root"
mkdir -p "$out/personalization/v1"
"$py" -m grpc_tools.protoc -I "$root/protos" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$root"/protos/personalization/v1/*.proto
touch "$out/personalization/v1/__init__.py"
echo "generated: $(ls "$out/personalization/v1" | tr '\n' ' ')"
