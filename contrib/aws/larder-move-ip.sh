#!/bin/sh
# Larder on_promote hook for AWS: move a secondary private IP (the "VIP") to this instance's
# network interface. On EC2 gratuitous ARP does nothing: the VPC routes an address to the
# interface the EC2 API assigned it to. Configure in larder.toml:
#
#   [hooks]
#   on_promote = "/usr/local/sbin/larder-move-ip.sh"
#   timeout_ms = 20000
#
# and set LARDER_AWS_IP below (or in /etc/default/larder-aws). Needs the AWS CLI and an
# instance role with the policy in contrib/aws/iam-policy.json.
set -eu
[ -r /etc/default/larder-aws ] && . /etc/default/larder-aws
IP="${LARDER_AWS_IP:-${LARDER_VIP:-}}"
[ -n "$IP" ] || { echo "LARDER_AWS_IP (or vip) not set" >&2; exit 2; }
[ "${LARDER_EVENT:-}" = promote ] || exit 0
# IMDSv2 token, then this instance's primary interface.
TOKEN=$(curl -sf -m 2 -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')
md() { curl -sf -m 2 -H "X-aws-ec2-metadata-token: $TOKEN" "http://169.254.169.254/latest/meta-data/$1"; }
MAC=$(md mac)
ENI=$(md "network/interfaces/macs/$MAC/interface-id")
REGION=$(md placement/region)
# The CLI's defaults (60 s connect and read timeouts, retries) would outlast the hook timeout.
aws --region "$REGION" --cli-connect-timeout 3 --cli-read-timeout 5 \
  ec2 assign-private-ip-addresses --network-interface-id "$ENI" \
  --private-ip-addresses "$IP" --allow-reassignment
echo "assigned $IP to $ENI (term ${LARDER_TERM:-?})"
