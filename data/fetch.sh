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

# `download_complete FILE CHECK URL...`: makes FILE a complete download, checked by the command `CHECK FILE`, from
# the first URL that gives one. A FILE already there that passes is kept; an interrupted download resumes from
# FILE.part. Returns non-zero if no URL gave a complete file.
download_complete() {
    file=$1
    check=$2
    shift 2
    if [ -f "$file" ] && $check "$file" >/dev/null 2>&1; then
        echo "$file is already there and complete: not downloading it again"
        return 0
    fi
    if [ -f "$file" ]; then
        mv "$file" "$file.part"
    fi
    for url in "$@"; do
        echo "Downloading $url"
        fetched=yes
        fetch "$url" "$file.part" || fetched=no
        # Checked even after a failed fetch: resuming a part that was already complete can end in an error.
        if [ -f "$file.part" ] && $check "$file.part" >/dev/null 2>&1; then
            mv "$file.part" "$file"
            return 0
        fi
        if [ "$fetched" = yes ]; then
            # The server said it sent everything, yet the file is broken: resuming it would only keep the damage.
            echo "$(basename "$0"): the file from $url is incomplete or corrupt; deleting it" >&2
            rm -f "$file.part"
        else
            echo "$(basename "$0"): could not download from $url" >&2
        fi
    done
    if [ -f "$file.part" ] && [ ! -s "$file.part" ]; then
        rm -f "$file.part"
    fi
    return 1
}
