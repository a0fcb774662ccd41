#!/bin/sh
# Larder on_promote hook for AWS: associate an Elastic IP with this instance (re-association
# takes it from the old leader). Set LARDER_AWS_EIP_ALLOCATION (eipalloc-...) here or in
# /etc/default/larder-aws. Policy: contrib/aws/iam-policy.json.
set -eu
[ -r /etc/default/larder-aws ] && . /etc/default/larder-aws
[ "${LARDER_EVENT:-}" = promote ] || exit 0
ALLOC="${LARDER_AWS_EIP_ALLOCATION:?set LARDER_AWS_EIP_ALLOCATION}"
TOKEN=$(curl -sf -m 2 -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')
md() { curl -sf -m 2 -H "X-aws-ec2-metadata-token: $TOKEN" "http://169.254.169.254/latest/meta-data/$1"; }
INSTANCE=$(md instance-id)
REGION=$(md placement/region)
aws --region "$REGION" --cli-connect-timeout 3 --cli-read-timeout 5 \
  ec2 associate-address --allocation-id "$ALLOC" --instance-id "$INSTANCE" --allow-reassociation
echo "associated $ALLOC with $INSTANCE (term ${LARDER_TERM:-?})"
