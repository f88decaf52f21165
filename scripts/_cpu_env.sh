# Sourced by the CPU scripts (reproduce_*.sh): the project root as working directory, the
# pinned CPU stack installed (.venv, scripts/install_cpu.sh sets VENV) and the offline settings.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/install_cpu.sh
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
