#!/usr/bin/python
# Copyright: PayCore engineering
# Apache License 2.0 (see galaxy.yml)
"""Lists Secrets Manager secrets by name prefix and tags, without their values."""

from __future__ import annotations

import contextlib

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry
from ansible_collections.amazon.aws.plugins.module_utils.tagging import (
    boto3_tag_list_to_ansible_dict,
)

with contextlib.suppress(ImportError):  # reported by AnsibleAWSModule
    import botocore

DOCUMENTATION = r"""
---
module: paycore_secrets_info
short_description: List AWS Secrets Manager secrets (metadata only) by name prefix and tags
description:
  - Calls C(ListSecrets) and returns the name, ARN, tags and deletion date of each
    matching secret. Never reads a secret value (no C(GetSecretValue)).
  - community.aws.secretsmanager_secret can only manage one secret by name, and
    calling it on an existing secret also cancels rotation and removes resource
    policies it was not told about; this module finds out what exists first.
options:
  name_prefix:
    description: Only secrets whose name starts with this (exact, case-sensitive).
    type: str
  tags:
    description: Only secrets carrying every one of these tags with exactly these values.
    type: dict
    default: {}
  include_planned_deletion:
    description: Also list secrets scheduled for deletion (their C(deleted_date) is set).
    type: bool
    default: true
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
"""

EXAMPLES = r"""
- name: Secrets of the deployment
  paycore_secrets_info:
    region: eu-central-1
    tags:
      "paycore:deployment": paycore
  register: found
"""

RETURN = r"""
secrets:
  description: The matching secrets, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Secret name., type: str}
    arn: {description: Secret ARN., type: str}
    description: {description: Secret description., type: str}
    tags: {description: Tags as a dict., type: dict}
    deleted_date:
      description: When deletion was requested; null unless scheduled for deletion.
      type: str
"""


def list_secrets(client, name_prefix, tags, include_planned_deletion):
    # Server-side filters narrow the listing (name is a case-insensitive
    # prefix match, tag-key/tag-value match independently of each other);
    # the exact comparison is done here.
    filters = []
    if name_prefix:
        filters.append({"Key": "name", "Values": [name_prefix]})
    if tags:
        filters.append({"Key": "tag-key", "Values": sorted(tags)})
    params = {"IncludePlannedDeletion": include_planned_deletion}
    if filters:
        params["Filters"] = filters
    paginator = client.get_paginator("list_secrets")
    found = []
    for secret in paginator.paginate(**params).build_full_result().get("SecretList", []):
        secret_tags = boto3_tag_list_to_ansible_dict(secret.get("Tags", []))
        if name_prefix and not secret["Name"].startswith(name_prefix):
            continue
        if any(secret_tags.get(key) != str(value) for key, value in tags.items()):
            continue
        deleted = secret.get("DeletedDate")
        found.append(
            {
                "name": secret["Name"],
                "arn": secret["ARN"],
                "description": secret.get("Description", ""),
                "tags": secret_tags,
                "deleted_date": deleted.isoformat() if deleted else None,
            }
        )
    return sorted(found, key=lambda item: item["name"])


def main():
    module = AnsibleAWSModule(
        argument_spec={
            "name_prefix": {"type": "str"},
            "tags": {"type": "dict", "default": {}},
            "include_planned_deletion": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    client = module.client("secretsmanager", retry_decorator=AWSRetry.jittered_backoff())
    try:
        secrets = list_secrets(
            client,
            module.params["name_prefix"],
            module.params["tags"],
            module.params["include_planned_deletion"],
        )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        module.fail_json_aws(error, msg="Failed to list secrets")
    module.exit_json(changed=False, secrets=secrets)


if __name__ == "__main__":
    main()
