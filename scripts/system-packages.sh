#!/bin/sh
# The Debian packages a make target needs, installed when missing (`make test` / `make demo` /
# `make app` run this first). Usage: scripts/system-packages.sh TARGET [PYTHON]
#
#   demo  python3-venv, when PYTHON is given (the venv is still to be made) and cannot make a
#         venv (Debian splits ensurepip out of python3)
#   app   + dataset-fashion-mnist (the VQA tab's test images)
#   test  + chromium and libatomic1 (the web demo's browser tests: Playwright's bundled node
#         driver links libatomic, which a minimal Debian lacks), wordnet-base (WordNet 3.0 database
#         files under /usr/share/wordnet: synonyms for the adversarial-prompt attacks)
#
# As root with apt-get, the missing ones are installed (apt-get update first); otherwise one
# line says what to install and make goes on (the tests that need a package fail or skip
# with their own message). Each package is recognised by a file it installs, so a package
# provided another way (VISIONSAE_FASHION_MNIST, VISIONSAE_CHROMIUM) counts too.
set -eu
target=${1:?usage: system-packages.sh demo|app|test [python]}
python=${2:-}

missing=""
need() {  # need PACKAGE PATH: PACKAGE is missing unless PATH exists
    [ -e "$2" ] || missing="$missing $1"
}

# Debian's python3 makes a venv only with python3-venv (ensurepip is split out of it)
if [ -n "$python" ] && ! "$python" -c "import ensurepip" >/dev/null 2>&1; then
    missing="$missing python3-venv"
fi
case $target in
    demo) ;;
    app|test)
        need dataset-fashion-mnist "${VISIONSAE_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}/t10k-images-idx3-ubyte.gz"
        if [ "$target" = test ]; then
            need chromium "${VISIONSAE_CHROMIUM:-/usr/bin/chromium}"
            # shellcheck disable=SC2086  # the glob finds the multiarch folder
            set -- /usr/lib/*/libatomic.so.1 /usr/lib/libatomic.so.1
            found=""
            for f in "$@"; do [ -e "$f" ] && found=1; done
            [ -n "$found" ] || missing="$missing libatomic1"
            need wordnet-base /usr/share/wordnet/data.noun
        fi ;;
    *) echo "system-packages.sh: unknown target '$target' (expected demo, app or test)" >&2; exit 2 ;;
esac
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # one word per package
    apt-get install -y -qq $missing >/dev/null
elif command -v apt-get >/dev/null 2>&1; then
    echo "visionsae: 'make $target' needs Debian packages it cannot install without root: sudo apt-get install$missing"
else
    echo "visionsae: 'make $target' needs the Debian packages$missing (no apt-get here: install their equivalents; VISIONSAE_FASHION_MNIST and VISIONSAE_CHROMIUM point at Fashion-MNIST and a Chromium)"
fi
