#!/usr/bin/env bash
# One MLflow tracking server for a team: runs and the registry in PostgreSQL, artifacts (sample
# grids, configs, registered models) in an object store, served to clients through the server
# (`--artifacts-destination`), so a training node needs only the server's URL, never the bucket's
# credentials. tests/test_team_tracking.py runs this arrangement (PostgreSQL 15, moto's S3 API).
#
#   MLFLOW_BACKEND_URI   postgresql+psycopg2://USER:PASSWORD@DBHOST:5432/mlflow  (the database must exist)
#   MLFLOW_ARTIFACTS     s3://BUCKET/mlartifacts
#   AWS_* variables      for the server only: credentials, and AWS_ENDPOINT_URL /
#                        MLFLOW_S3_ENDPOINT_URL for an S3 API other than AWS (MinIO, Ceph, ...)
#   HOST, PORT, WORKERS  where it listens (default 0.0.0.0:5000, 4 workers)
#
# Clients: tracking.uri=http://SERVER:5000 in a recipe, or MLFLOW_TRACKING_URI; `mlflow ui` is
# the server's own page at that URL.
set -euo pipefail
: "${MLFLOW_BACKEND_URI:?set MLFLOW_BACKEND_URI, e.g. postgresql+psycopg2://mlflow:secret@db:5432/mlflow}"
: "${MLFLOW_ARTIFACTS:?set MLFLOW_ARTIFACTS, e.g. s3://team-bucket/mlartifacts}"
export MLFLOW_DISABLE_TELEMETRY=true
exec mlflow server --backend-store-uri "$MLFLOW_BACKEND_URI" --artifacts-destination "$MLFLOW_ARTIFACTS" \
  --host "${HOST:-0.0.0.0}" --port "${PORT:-5000}" --workers "${WORKERS:-4}"
