# Shared by the download scripts (sourced): `fail MESSAGE` and `fetch URL FILE`, which resumes a partial FILE.
# FETCH_CONNECT_TIMEOUT: seconds to wait for a server to answer.

fail() {
    echo "$(basename "$0"): error: $*" >&2
    exit 1
}

# curl first: it also reads file:// addresses; wget is the fallback on machines without curl.
fetch() {
    if command -v curl >/dev/null 2>&1; then
        curl --fail --location --connect-timeout "$FETCH_CONNECT_TIMEOUT" --continue-at - --output "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget --tries=2 --dns-timeout="$FETCH_CONNECT_TIMEOUT" --connect-timeout="$FETCH_CONNECT_TIMEOUT" \
            --read-timeout=120 --continue --output-document="$2" "$1"
    else
        fail "neither curl nor wget is installed"
    fi
}
