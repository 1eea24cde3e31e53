"""Files in and out: the one atomic writer (`atomic`), input expansion and the batch runner (`batch`)."""
