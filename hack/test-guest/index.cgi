#!/bin/sh
# The test guest's HTTP page (busybox httpd runs it for "/"): plain-text "key=value" lines,
# regenerated on every request so that uptime is live.
printf 'Content-Type: text/plain\r\nCache-Control: no-store\r\n\r\n'
echo "hostname=$(hostname)"
echo "token=$(cat /run/token 2>/dev/null)"
echo "uptime=$(cut -d ' ' -f 1 /proc/uptime)"
