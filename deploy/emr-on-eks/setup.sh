#!/usr/bin/env bash
# Set up the AWS side of fruitlens on EMR on EKS, from the EMR profile (docs/emr-on-eks.md, step 3):
#   1. the namespace and the RBAC EMR needs in it (namespace.yaml, rbac.yaml), and EMR's service-linked
#      role as the Kubernetes user emr-containers: an EKS access entry when the cluster's authentication
#      mode has the API (API, API_AND_CONFIG_MAP; aws-auth is ignored in API mode), else aws-auth
#   2. IRSA (identity: irsa, the default): the cluster's IAM OIDC provider; EKS Pod Identity
#      (identity: pod-identity): the eks-pod-identity-agent add-on
#   3. the job execution role: `fruitlens emr trust-policy` MERGED into its current trust policy (a
#      shared role keeps other clusters' trust, as `aws emr-containers update-role-trust-policy` appends),
#      inline policy = `fruitlens emr iam-policy`
#   4. the CloudWatch log group, if the profile names one, with the profile's log_retention_days
#      and, for pod-identity, the role's associations with EMR's service accounts
#   5. the virtual cluster (named virtual_cluster_name) on the namespace
# Idempotent: every step checks before creating, so a re-run only updates the role's policies.
# The partition (aws, aws-cn, aws-us-gov) is the execution role ARN's; nothing assumes arn:aws:.
#
# Usage: deploy/emr-on-eks/setup.sh EKS_CLUSTER_NAME PROFILE.yaml
# Needs: aws (v2), kubectl (context on the EKS cluster), eksctl; credentials allowed to change IAM and EKS.
set -euo pipefail

usage() { echo "usage: $0 EKS_CLUSTER_NAME PROFILE.yaml" >&2; exit 2; }
[ $# -eq 2 ] || usage
cluster=$1
profile=$2
[ -f "$profile" ] || { echo "setup: profile $profile not found (start from examples/emr-profile.yaml)" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
FRUITLENS=${FRUITLENS:-$root/.venv/bin/fruitlens}
[ -x "$FRUITLENS" ] || FRUITLENS=$(command -v fruitlens) || { echo "setup: fruitlens not found (make setup)" >&2; exit 2; }
for tool in aws kubectl eksctl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "setup: $tool is required" >&2; exit 2; }
done

get() { "$FRUITLENS" emr profile --profile "$profile" --get "$1"; }
region=$(get region)
namespace=$(get namespace)
role_arn=$(get execution_role_arn)
vc_name=$(get virtual_cluster_name)
log_group=$(get log_group)
[ -n "$region" ] || { echo "setup: set region in $profile" >&2; exit 2; }
[ -n "$role_arn" ] || { echo "setup: set execution_role_arn in $profile (the role is created with that name)" >&2; exit 2; }
[ -n "$vc_name" ] || { echo "setup: set virtual_cluster_name in $profile" >&2; exit 2; }
role_name=${role_arn##*/}
partition=$(cut -d: -f2 <<< "$role_arn")
retention=$(get log_retention_days)
identity=$(get identity)
account=$(aws sts get-caller-identity --query Account --output text)
case "$role_arn" in
  *":$account:"*) ;;
  *) echo "setup: $role_arn is not in the current account $account" >&2; exit 2 ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "setup: 1/5 namespace $namespace and RBAC for EMR on EKS"
sed "s/^\(  name: \)fruitlens$/\1$namespace/" "$here/namespace.yaml" | kubectl apply -f -
sed "s/^\(  namespace: \)fruitlens$/\1$namespace/" "$here/rbac.yaml" | kubectl apply -f -
slr="arn:$partition:iam::$account:role/AWSServiceRoleForAmazonEMRContainers"
mode=$(aws eks describe-cluster --name "$cluster" --region "$region" \
         --query cluster.accessConfig.authenticationMode --output text)
case "$mode" in
  API|API_AND_CONFIG_MAP)
    if aws eks describe-access-entry --cluster-name "$cluster" --region "$region" --principal-arn "$slr" >/dev/null 2>&1; then
      echo "setup: access entry for $slr exists (authentication mode $mode)"
    else
      aws eks create-access-entry --cluster-name "$cluster" --region "$region" --principal-arn "$slr" \
        --username emr-containers >/dev/null
      echo "setup: created the access entry $slr -> emr-containers (authentication mode $mode)"
    fi ;;
  *)  # CONFIG_MAP, or a cluster too old to report a mode
    if eksctl get iamidentitymapping --cluster "$cluster" --region "$region" --arn "$slr" >/dev/null 2>&1; then
      echo "setup: aws-auth already maps $slr"
    else
      eksctl create iamidentitymapping --cluster "$cluster" --region "$region" --arn "$slr" --username emr-containers
    fi ;;
esac

if [ "$identity" = pod-identity ]; then
  echo "setup: 2/5 EKS Pod Identity agent on $cluster (no OIDC provider needed)"
  if aws eks describe-addon --cluster-name "$cluster" --region "$region" --addon-name eks-pod-identity-agent >/dev/null 2>&1; then
    echo "setup: the eks-pod-identity-agent add-on is installed"
  else
    aws eks create-addon --cluster-name "$cluster" --region "$region" --addon-name eks-pod-identity-agent >/dev/null
  fi
  trust_args=()
else
  echo "setup: 2/5 IAM OIDC provider of $cluster"
  eksctl utils associate-iam-oidc-provider --cluster "$cluster" --region "$region" --approve
  issuer=$(aws eks describe-cluster --name "$cluster" --region "$region" --query cluster.identity.oidc.issuer --output text)
  trust_args=(--oidc-provider "${issuer#https://}")
fi

echo "setup: 3/5 job execution role $role_name"
"$FRUITLENS" emr iam-policy --profile "$profile" > "$work/policy.json"
if aws iam get-role --role-name "$role_name" --query Role.AssumeRolePolicyDocument --output json > "$work/current.json" 2>/dev/null; then
  "$FRUITLENS" emr trust-policy --profile "$profile" "${trust_args[@]}" --merge-with "$work/current.json" > "$work/trust.json"
  aws iam update-assume-role-policy --role-name "$role_name" --policy-document "file://$work/trust.json"
  echo "setup: trust policy of $role_name: $namespace on $cluster added if missing, other statements kept"
else
  "$FRUITLENS" emr trust-policy --profile "$profile" "${trust_args[@]}" > "$work/trust.json"
  aws iam create-role --role-name "$role_name" --assume-role-policy-document "file://$work/trust.json" \
    --description "fruitlens job on EMR on EKS ($cluster/$namespace)" --tags Key=app,Value=fruitlens >/dev/null
fi
aws iam put-role-policy --role-name "$role_name" --policy-name fruitlens-job --policy-document "file://$work/policy.json"
if [ "$identity" = pod-identity ]; then
  missing=0
  for sa in $("$FRUITLENS" emr service-accounts --profile "$profile"); do
    [ "$(aws eks list-pod-identity-associations --cluster-name "$cluster" --region "$region" --namespace "$namespace" \
          --service-account "$sa" --query 'length(associations)' --output text)" != 0 ] || missing=1
  done
  if [ "$missing" = 1 ]; then
    aws emr-containers create-role-associations --cluster-name "$cluster" --region "$region" \
      --namespace "$namespace" --role-name "$role_name" >/dev/null
    echo "setup: associated $role_name with EMR's service accounts in $namespace (EKS Pod Identity)"
  else
    echo "setup: EMR's service accounts in $namespace are already associated with a role"
  fi
fi

if [ -n "$log_group" ]; then
  echo "setup: 4/5 CloudWatch log group $log_group"
  if [ "$(aws logs describe-log-groups --region "$region" --log-group-name-prefix "$log_group" \
          --query "length(logGroups[?logGroupName=='$log_group'])" --output text)" = 0 ]; then
    aws logs create-log-group --region "$region" --log-group-name "$log_group"
  fi
  # CloudWatch keeps logs forever (and bills for them) unless told otherwise.
  aws logs put-retention-policy --region "$region" --log-group-name "$log_group" --retention-in-days "$retention"
else
  echo "setup: 4/5 no log_group in the profile: CloudWatch skipped"
fi

echo "setup: 5/5 virtual cluster $vc_name on $cluster/$namespace"
existing=$("$FRUITLENS" emr clusters --profile "$profile" | awk -F'\t' -v n="$vc_name" '$2 == n {print $1}')
if [ -n "$existing" ]; then
  echo "setup: virtual cluster $vc_name is RUNNING: $existing"
else
  aws emr-containers create-virtual-cluster --region "$region" --name "$vc_name" \
    --container-provider "{\"id\": \"$cluster\", \"type\": \"EKS\", \"info\": {\"eksInfo\": {\"namespace\": \"$namespace\"}}}" \
    --query id --output text
fi
echo "setup: done. Next: fruitlens emr check-access --profile $profile, fruitlens emr submit --profile $profile --dry-run, then make run EMR_PROFILE=$profile"
