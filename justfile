# NEXUS Edge — the one entry point for people and CI. `just` lists the recipes.

python := env("PYTHON", "python")

# list the recipes
default:
    @{{just_executable()}} --list

# install the project with its development tools into the current Python environment
setup:
    {{python}} -m pip install -e ".[dev]"
    @{{just_executable()}} sparkplug-host

# the third-party Sparkplug library the tests' independent host uses; --no-deps: it pins paho-mqtt<2
# only for its own client, which the tests do not use (its payload codec works with paho 2)
sparkplug-host:
    @{{python}} -c "import pysparkplug" 2>/dev/null || {{python}} -m pip install -q --no-deps "pysparkplug>=0.6,<0.7"

# regenerate connectors/sparkplug/sparkplug_b_pb2.py/.pyi from sparkplug_b.proto (protoc from grpcio-tools, in a throwaway venv)
sparkplug-proto:
    #!/usr/bin/env sh
    set -eu
    venv="$(mktemp -d)/protoc"
    {{python}} -m venv "$venv"
    "$venv/bin/pip" install -q "grpcio-tools>=1.85,<1.86"
    "$venv/bin/python" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. connectors/sparkplug/sparkplug_b.proto
    rm -rf "$(dirname "$venv")"

# run the demo on embedded defaults (PostgreSQL, MQTT broker, simulated PLCs, the dataflow)
demo *ARGS:
    nexus demo {{ARGS}}

# run the platform: database, broker, API and supervisor (add --simulate for simulated devices)
up *ARGS:
    nexus up {{ARGS}}

# run the telemetry dataflow against NEXUS_DATABASE_URL / NEXUS_MQTT_URL
run *ARGS:
    nexus run {{ARGS}}

# run the test suite (unit, property, integration against real services, doctests)
test *ARGS: sparkplug-host
    {{python}} -m pytest {{ARGS}}

# lint and check formatting
lint:
    {{python}} -m ruff check .
    {{python}} -m ruff format --check .

# static type checks
typecheck:
    {{python}} -m mypy core connectors operators dataflows api nexus bench control

# format the code
fmt:
    {{python}} -m ruff format .
    {{python}} -m ruff check --fix .

# regenerate the published JSON Schema of the flow spec
schema:
    nexus schema -o dataflows/schema/flow-spec-v1.json

# benchmark: real PostgreSQL, broker, simulators and dataflow, historian queries on 50 M rows, the CPU per point at 10/100/500 devices (cost), the 1/2-process cluster and a short 100 ms ramp on 1 and 2 processes; table + bench-results/<time>.json (~30 minutes)
bench *ARGS:
    {{python}} -m bench --devices 200 --tags 100 --interval 1 --duration 30 --stages micro,sinks,sparkplug,modbus,e2e,cost,ramp,cluster,query --ramp-devices 50,100,150,200 --ramp-processes 1,2 --ramp-warmup 5 --ramp-seconds 8 --ramp-budget 120 --cluster-repeats 3 {{ARGS}}

# the longer benchmark: 500 devices x 100 tags at 1 s for 2 minutes, larger baselines, the 100 ms ramp and the 100,000-tag memory stage
bench-full *ARGS:
    {{python}} -m bench --devices 500 --tags 100 --interval 1 --duration 120 --warmup 15 --baseline-rows 1000000 --baseline-messages 300000 --micro-points 3000000 --cluster-points 8000000 --cluster-repeats 3 --ramp-processes 1,2 --stages micro,sinks,modbus,e2e,ramp,memory,cluster {{ARGS}}

# fault injection: broker/database/flow/spool-volume/device faults at 20,000 points/s, QoS 1; per-scenario figures (about 25 minutes)
chaos *ARGS:
    {{python}} -m bench.chaos --devices 200 --tags 100 --interval 1 --outage 60 --qos 1 {{ARGS}}

# the soak: 30 minutes at 20,000 points/s, QoS 1, a broker flap every 5 minutes; prints PASS/FAIL for RSS growth after warm-up < 5 %, spool empty at the end, read = stored = received
soak *ARGS:
    {{python}} -m bench.chaos --devices 200 --tags 100 --interval 1 --qos 1 --scenarios soak --soak-minutes 30 --flap-every 300 {{ARGS}}

# the spool's candidates (segment files, SQLite WAL) measured with group commit
bench-spool *ARGS:
    {{python}} -m bench.spool {{ARGS}}

# build the web UI from ui/ into api/ui_dist (shipped in the package): npm ci, type check, vite build
ui:
    cd ui && npm ci --no-audit --no-fund && npm run build

# rebuild the web UI, run its unit tests, and fail if the committed bundle in api/ui_dist differs (stale or edited by hand)
ui-check: ui
    cd ui && npm test
    git diff --exit-code --stat -- api/ui_dist
    test -z "$(git status --porcelain -- api/ui_dist)" || (git status --porcelain -- api/ui_dist; echo "api/ui_dist is stale: run just ui and commit it"; exit 1)

# regenerate ui/src/api/schema.d.ts (the API's types) from the app's OpenAPI document
ui-schema:
    cd ui && PYTHON={{python}} npm run schema

# screenshots of every page of the web UI, against the real API on embedded services (into test-artifacts/shots)
ui-shots *ARGS:
    {{python}} -m pytest tests/ui/test_shots.py -q -p no:randomly {{ARGS}}

# everything CI checks: lint, types, the UI (type check, build, unit tests, stale bundle), tests
ci: lint typecheck ui-check test
