#!/usr/bin/env bash
# Runs on the host, in this folder, after `vagrant up`: starts iperf3 on prod
# and a gateway on gwa (PROD side) and gwb (CONS side), sets a session up with
# s2uc connect (run on gwb, the consumer's side of the WAN), then measures
# iperf3 from cons through both gateways, one stream and four. Prints the
# iperf3 summaries and releases the session.
set -euo pipefail
on() { vagrant ssh "$1" -c "$2" -- -q; }

on prod "pkill iperf3 || true; iperf3 -s -D -p 7000"
on gwa "sudo pkill s2cs || true; sudo rm -rf /var/lib/s2cs; sudo sh -c 'nohup s2cs serve \
  --control-listen 10.10.2.1:5000 --port-range 5100-5199 --listener-ip 10.10.2.1 \
  --advertise-ip 10.10.2.1 --no-auth --allow 10.10.1.0/24 --state-dir /var/lib/s2cs \
  > /var/log/s2cs.log 2>&1 &'"
on gwb "sudo pkill s2cs || true; sudo rm -rf /var/lib/s2cs; sudo sh -c 'nohup s2cs serve \
  --control-listen 10.10.3.1:5000 --port-range 5100-5199 --listener-ip 10.10.3.1 \
  --advertise-ip 10.10.3.1 --no-auth --allow 10.10.2.0/24:5100-5199 --state-dir /var/lib/s2cs \
  > /var/log/s2cs.log 2>&1 &'"
sleep 3
on gwa "sudo cat /var/lib/s2cs/tls/control-cert.pem" > prod-cert.pem
on gwb "sudo cat /var/lib/s2cs/tls/control-cert.pem" > cons-cert.pem
vagrant upload prod-cert.pem /tmp/prod-cert.pem gwb
vagrant upload cons-cert.pem /tmp/cons-cert.pem gwb
out=$(on gwb "s2uc connect --prod-s2cs 10.10.2.1:5000 --cons-s2cs 10.10.3.1:5000 \
  --prod-cert /tmp/prod-cert.pem --cons-cert /tmp/cons-cert.pem \
  --producer 10.10.1.2:7000 --num-conn 1")
echo "$out"
listener=$(echo "$out" | sed -n 's/^consumer connects to: *//p' | cut -d, -f1 | tr -d '\r')
uid=$(echo "$out" | sed -n 's/^uid: *//p' | tr -d '\r')
host=${listener%:*}; port=${listener##*:}
for streams in 1 4; do
  echo "== iperf3 through the gateways, $streams stream(s)"
  on cons "iperf3 -c $host -p $port -t 10 -P $streams | tail -4"
done
on gwb "s2uc release $uid --s2cs 10.10.3.1:5000 --server-cert /tmp/cons-cert.pem; \
  s2uc release $uid --s2cs 10.10.2.1:5000 --server-cert /tmp/prod-cert.pem"
