import durable_jobs as jobs


def test_enqueue_get(queue: jobs.Queue) -> None:
    job_id = queue.enqueue("hello", {"x": 1})
    job = queue.get(job_id)
    assert job.status is jobs.Status.PENDING
    assert job.args == {"x": 1}
