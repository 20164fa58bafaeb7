"""playbooks/aws-backup-bucket.yml: the S3 bucket for PostgreSQL backups, its user and key.

Deployment "bktest", in an environment of its own (no edge: the bucket does
not need one). The scenario makes the bucket, converges it, stores the
user's access key with aws-secrets.yml, makes a second bucket encrypted with
a KMS key, then tears the deployment down twice: first keeping the backups
(the default), then with them.
"""

from __future__ import annotations

import json

import pytest
from awshelpers import ACCOUNT, REGION, scenario, tags_of
from botocore.exceptions import ClientError
from moto.iam.access_control import IAMPolicy, PermissionResult

DEPLOYMENT = "bktest"
BUCKET = f"{DEPLOYMENT}-pgbackup-{ACCOUNT}"
USER = f"{DEPLOYMENT}-postgresql-backup"
KMS_BUCKET = f"{DEPLOYMENT}-kms-backups"
KMS_USER = f"{DEPLOYMENT}-kms-backup"
CREDENTIALS = f"{DEPLOYMENT}/postgresql_backup_s3_credentials"


def bucket_vars(endpoint_url: str, **overrides) -> dict:
    return {
        "aws_backup_bucket_region": REGION,
        "aws_backup_bucket_endpoint_url": endpoint_url,
        "aws_backup_bucket_deployment": DEPLOYMENT,
        "aws_backup_bucket_expire_days": 400,
        **overrides,
    }


def teardown_vars(endpoint_url: str, **overrides) -> dict:
    """aws-teardown.yml for the deployment: edge (none here), backups, secrets."""
    return {
        **bucket_vars(endpoint_url),
        "aws_edge_region": REGION,
        "aws_edge_endpoint_url": endpoint_url,
        "aws_edge_deployment": DEPLOYMENT,
        "aws_secrets_region": REGION,
        "aws_secrets_endpoint_url": endpoint_url,
        "aws_secrets_deployment": DEPLOYMENT,
        "aws_secrets_recovery_window_days": 0,
        "paycore_aws_teardown_confirm": DEPLOYMENT,
        **overrides,
    }


def describe_bucket(aws, name: str) -> dict:
    s3 = aws("s3")
    rules = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
    return {
        "versioning": s3.get_bucket_versioning(Bucket=name).get("Status"),
        "encryption": rules,
        "public_access": s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"],
        "ownership": s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]["Rules"],
        "policy": json.loads(s3.get_bucket_policy(Bucket=name)["Policy"]),
        "lifecycle": s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"],
        "tags": {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=name)["TagSet"]},
    }


def user_policy(aws, user: str) -> dict:
    iam = aws("iam")
    assert iam.list_user_policies(UserName=user)["PolicyNames"] == ["backup-bucket"]
    assert iam.list_attached_user_policies(UserName=user)["AttachedPolicies"] == []
    document = iam.get_user_policy(UserName=user, PolicyName="backup-bucket")["PolicyDocument"]
    return json.loads(document) if isinstance(document, str) else document


def leftovers(aws) -> dict:
    """What of the deployment is left: buckets, users, secrets (by tag)."""
    s3, iam, sm = aws("s3"), aws("iam"), aws("secretsmanager")
    buckets = [
        b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith(f"{DEPLOYMENT}-")
    ]
    users = [
        u["UserName"]
        for u in iam.list_users(PathPrefix="/paycore/")["Users"]
        if u["UserName"].startswith(f"{DEPLOYMENT}-")
    ]
    secrets = sm.list_secrets(
        IncludePlannedDeletion=True, Filters=[{"Key": "tag-value", "Values": [DEPLOYMENT]}]
    )["SecretList"]
    return {
        "buckets": sorted(buckets),
        "users": sorted(users),
        "secrets": [s["Name"] for s in secrets],
    }


@scenario("backup-bucket", priority=4)
def backup_bucket(ctx):
    def created(done):
        result = {
            "run": ctx.play("aws-backup-bucket.yml", **bucket_vars(ctx.endpoint_url)),
            "bucket": describe_bucket(ctx.aws, BUCKET),
            "policy": user_policy(ctx.aws, USER),
        }
        # moto applies the bucket policy to object uploads, and its endpoint
        # here is plain HTTP: the upload is refused, as on AWS.
        try:
            ctx.aws("s3").put_object(Bucket=BUCKET, Key="over-http", Body=b"x")
            result["upload over HTTP"] = "accepted"
        except ClientError as error:
            result["upload over HTTP"] = error.response["Error"]["Code"]
        return result

    def credentials(done):
        ctx.play(
            "aws-secrets.yml",
            aws_secrets_region=REGION,
            aws_secrets_endpoint_url=ctx.endpoint_url,
            aws_secrets_deployment=DEPLOYMENT,
            aws_secrets_alertmanager_sns_user="",
            aws_secrets_backup_s3_user=USER,
        )
        sm = ctx.aws("secretsmanager")
        stored = json.loads(sm.get_secret_value(SecretId=CREDENTIALS)["SecretString"])
        keys = ctx.aws("iam").list_access_keys(UserName=USER)["AccessKeyMetadata"]
        return {
            "stored": stored,
            "keys": keys,
            "tags": tags_of(sm.describe_secret(SecretId=CREDENTIALS)),
        }

    def with_kms(done):
        key = ctx.aws("kms").create_key(Description="backups")["KeyMetadata"]["Arn"]
        variables = bucket_vars(
            ctx.endpoint_url,
            aws_backup_bucket_name=KMS_BUCKET,
            aws_backup_bucket_kms_key_arn=key,
            aws_backup_bucket_iam_user=KMS_USER,
            aws_backup_bucket_noncurrent_days=0,
            aws_backup_bucket_expire_days=0,
        )
        ctx.play("aws-backup-bucket.yml", **variables)
        return {
            "key": key,
            "bucket": describe_bucket(ctx.aws, KMS_BUCKET),
            "policy": user_policy(ctx.aws, KMS_USER),
            "second run": ctx.play("aws-backup-bucket.yml", **variables),
        }

    def teardown_keeping_backups(done):
        ctx.play("aws-teardown.yml", **teardown_vars(ctx.endpoint_url))
        return leftovers(ctx.aws)

    def teardown_with_backups(done):
        # Backups in it, a deleted one among them (a noncurrent version and a
        # delete marker): the bucket still goes. moto has no TLS endpoint, so
        # the TLS-only policy is lifted first to put them there.
        s3 = ctx.aws("s3")
        s3.delete_bucket_policy(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="archive/000000010000000000000001", Body=b"wal")
        s3.put_object(Bucket=BUCKET, Key="archive/000000010000000000000001", Body=b"wal 2")
        s3.delete_object(Bucket=BUCKET, Key="archive/000000010000000000000001")
        ctx.play(
            "aws-teardown.yml", **teardown_vars(ctx.endpoint_url, paycore_aws_teardown_backups=True)
        )
        return leftovers(ctx.aws)

    return [
        ("created", created),
        (
            "second run",
            lambda done: ctx.play("aws-backup-bucket.yml", **bucket_vars(ctx.endpoint_url)),
        ),
        (
            "check mode",
            lambda done: ctx.play(
                "aws-backup-bucket.yml", "--check", **bucket_vars(ctx.endpoint_url)
            ),
        ),
        ("credentials", credentials),
        ("with KMS", with_kms),
        ("teardown keeping the backups", teardown_keeping_backups),
        ("teardown with the backups", teardown_with_backups),
    ]


@pytest.fixture(scope="module")
def stage(scenarios):
    return scenarios["backup-bucket"].result


def test_bucket_is_private_encrypted_versioned(stage):
    bucket = stage("created")["bucket"]
    assert bucket["versioning"] == "Enabled"
    (rule,) = bucket["encryption"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert bucket["public_access"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["ownership"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    arn = f"arn:aws:s3:::{BUCKET}"
    assert bucket["policy"]["Statement"] == [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [arn, f"{arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    ]
    assert bucket["tags"]["paycore:deployment"] == DEPLOYMENT
    assert bucket["tags"]["paycore:component"] == "backups"


def test_upload_over_plain_http_is_refused(stage):
    assert stage("created")["upload over HTTP"] in ("403", "AccessDenied")


def test_lifecycle_expires_by_age(stage):
    (rule,) = stage("created")["bucket"]["lifecycle"]
    assert rule["ID"] == "paycore-backups"
    assert rule["Status"] == "Enabled"
    assert rule["Expiration"] == {"Days": 400}
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}


def test_backup_user_may_only_use_the_bucket(stage):
    policy = IAMPolicy(json.dumps(stage("created")["policy"]))
    arn = f"arn:aws:s3:::{BUCKET}"
    for action, resource in [
        ("s3:ListBucket", arn),
        ("s3:PutObject", f"{arn}/archive/000000010000000000000001"),
        ("s3:GetObject", f"{arn}/backup/20261204-000000F/pg_data/PG_VERSION"),
        ("s3:DeleteObject", f"{arn}/backup/20261204-000000F/backup.manifest"),
    ]:
        assert policy.is_action_permitted(action, resource) == PermissionResult.PERMITTED, action
    other = "arn:aws:s3:::someone-elses-bucket"
    for action, resource in [
        ("s3:PutObject", f"{other}/x"),
        ("s3:GetObject", f"{other}/x"),
        ("s3:ListBucket", other),
        ("s3:DeleteBucket", arn),
        ("s3:PutBucketPolicy", arn),
        ("s3:PutLifecycleConfiguration", arn),
        ("s3:PutBucketVersioning", arn),
        ("s3:DeleteObjectVersion", f"{arn}/x"),
        ("kms:Decrypt", "*"),
        ("iam:CreateAccessKey", "*"),
        ("secretsmanager:GetSecretValue", "*"),
    ]:
        assert policy.is_action_permitted(action, resource) != PermissionResult.PERMITTED, action


def test_second_run_and_check_mode_change_nothing(stage):
    for name in ("second run", "check mode"):
        run = stage(name)
        assert run.recap["changed"] == 0, run.stdout


def test_access_key_is_stored_in_secrets_manager(stage):
    credentials = stage("credentials")
    stored = credentials["stored"]
    assert [(k["AccessKeyId"], k["Status"]) for k in credentials["keys"]] == [
        (stored["access_key_id"], "Active")
    ]
    assert len(stored["secret_access_key"]) >= 20
    assert credentials["tags"]["paycore:access-key-id"] == stored["access_key_id"]
    assert credentials["tags"]["paycore:iam-user"] == USER


def test_kms_key_encrypts_and_the_user_may_use_it(stage):
    kms = stage("with KMS")
    (rule,) = kms["bucket"]["encryption"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": kms["key"],
    }
    assert rule["BucketKeyEnabled"] is True
    # No expiry asked for: only unfinished uploads are cleaned up.
    (lifecycle,) = kms["bucket"]["lifecycle"]
    assert "Expiration" not in lifecycle and "NoncurrentVersionExpiration" not in lifecycle
    policy = IAMPolicy(json.dumps(kms["policy"]))
    for action in ("kms:Decrypt", "kms:GenerateDataKey"):
        assert policy.is_action_permitted(action, kms["key"]) == PermissionResult.PERMITTED
    other_key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000"
    assert policy.is_action_permitted("kms:Decrypt", other_key) != PermissionResult.PERMITTED
    assert kms["second run"].recap["changed"] == 0, kms["second run"].stdout


def test_teardown_keeps_the_backups_unless_asked(stage):
    kept = stage("teardown keeping the backups")
    assert kept == {
        "buckets": sorted([BUCKET, KMS_BUCKET]),
        "users": sorted([USER, KMS_USER]),
        "secrets": [CREDENTIALS],
    }
    assert stage("teardown with the backups") == {"buckets": [], "users": [], "secrets": []}


def test_kms_alias_is_refused_before_anything(run_playbook, aws_env, endpoint_url, aws):
    variables = bucket_vars(
        endpoint_url,
        aws_backup_bucket_deployment="bkbad",
        aws_backup_bucket_kms_key_arn=f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/backups",
    )
    run = run_playbook("aws-backup-bucket.yml", extra_vars=variables, env=aws_env)
    assert run.rc != 0
    assert "an alias cannot be granted in a policy" in run.output
    names = [b["Name"] for b in aws("s3").list_buckets()["Buckets"]]
    assert not [n for n in names if n.startswith("bkbad-")]
