"""AWS set-up shared by the tests and the demo (against moto)."""

from __future__ import annotations

from typing import Any


def bucket_notifying_queue(s3: Any, sqs: Any, bucket: str, queue: str) -> str:
    """Create ``bucket`` and ``queue`` with ObjectCreated notifications from one to the
    other (as S3 does it: the queue first receives an ``s3:TestEvent``); returns the
    queue URL."""
    queue_url: str = sqs.create_queue(QueueName=queue)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": attributes["Attributes"]["QueueArn"], "Events": ["s3:ObjectCreated:*"]}
            ]
        },
    )
    return queue_url
