#!/usr/bin/env bash
# Shell quoting shared by the launch scripts (sourced, not run). Bash 3.2+.

# shell_quote ARG: ARG quoted for a POSIX shell (left bare when it is safe).
shell_quote() {
  local s=$1 q="'\\''"
  if [ -n "$s" ] && [[ $s =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/$q}"
  fi
}

# join_quoted ARGS...: the args as one shell command line.
join_quoted() {
  local out="" arg
  for arg in "$@"; do
    out="${out:+$out }$(shell_quote "$arg")"
  done
  printf '%s' "$out"
}
