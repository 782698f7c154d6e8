"""The model tests' `slow_s3`, an S3 look-alike on loopback that can hang a stage
(with `aws`, the credentials it needs), for the local runtime's staging tests."""

from tests.models.conftest import aws, slow_s3

__all__ = ["aws", "slow_s3"]
