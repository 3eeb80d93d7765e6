# NEXUS Edge — the one entry point for people and CI. `just` lists the recipes.

python := env("PYTHON", "python")

# list the recipes
default:
    @{{just_executable()}} --list

# install the project with its development tools into the current Python environment
setup:
    {{python}} -m pip install -e ".[dev]"

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
test *ARGS:
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

# benchmark: real PostgreSQL, broker, simulators and dataflow, historian queries on 50 M rows; table + bench-results/<time>.json (~15 minutes)
bench *ARGS:
    {{python}} -m bench --devices 200 --tags 100 --interval 1 --duration 30 {{ARGS}}

# the longer benchmark: 500 devices x 100 tags at 1 s for 2 minutes, larger baselines, the 100 ms ramp and the 100,000-tag memory stage
bench-full *ARGS:
    {{python}} -m bench --devices 500 --tags 100 --interval 1 --duration 120 --warmup 15 --baseline-rows 1000000 --baseline-messages 300000 --micro-points 3000000 --cluster-points 3000000 --stages micro,sinks,modbus,e2e,ramp,memory,cluster {{ARGS}}

# everything CI checks: lint, types, tests
ci: lint typecheck test
