"""Drive the Traceo stack as a user's agent would: over MCP, upload one good and one malformed
CSV with the upload_csv tool, then poll job_status until both webhooks came back.

Run: python mcp_client.py MCP_URL  -> prints one JSON line per job: {"job_id", "status", ...},
then asks for a job that does not exist (a tool error) and prints {"missing_job_is_error": ...}.
     python mcp_client.py MCP_URL N -> N uploads at once (good and malformed alternating), then
one JSON line per job once its webhook came.
"""
import asyncio
import json
import sys

from mcp.client import Client

GOOD = "id,name,amount\n1,alpha,10\n2,beta,20\n3,gamma,30\n"
MALFORMED = "id,name,amount\n1,alpha\n2,beta,20,extra\n"


def structured(result):
    if result.structured_content:
        return result.structured_content.get("result", result.structured_content)
    return json.loads(result.content[0].text)


async def main(url: str) -> None:
    async with Client(url) as client:
        jobs = []
        for name, content in (("good.csv", GOOD), ("malformed.csv", MALFORMED)):
            result = await client.call_tool("upload_csv", {"filename": name, "content": content})
            jobs.append(structured(result)["job_id"])
        for job_id in jobs:
            for _ in range(100):
                status = structured(await client.call_tool("job_status", {"job_id": job_id}))
                if status.get("source") == "webhook":
                    break
                await asyncio.sleep(0.1)
            print(json.dumps(status), flush=True)
        # A tool failure inside a 200 answer: the engine has no such job.
        missing = await client.call_tool("job_status", {"job_id": "no-such-job"})
        print(json.dumps({"missing_job_is_error": missing.is_error}), flush=True)


async def wait_for_webhook(client, job_id):
    for _ in range(200):
        status = structured(await client.call_tool("job_status", {"job_id": job_id}))
        if status.get("source") == "webhook":
            return status
        await asyncio.sleep(0.1)
    return status


async def concurrent(url: str, n: int) -> None:
    async with Client(url) as client:
        async def upload(i):
            name, content = (f"good-{i}.csv", GOOD) if i % 2 == 0 else (f"malformed-{i}.csv", MALFORMED)
            result = await client.call_tool("upload_csv", {"filename": name, "content": content})
            return structured(result)["job_id"]

        jobs = await asyncio.gather(*(upload(i) for i in range(n)))
        for status in await asyncio.gather(*(wait_for_webhook(client, j) for j in jobs)):
            print(json.dumps(status), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2:
        asyncio.run(concurrent(sys.argv[1], int(sys.argv[2])))
    else:
        asyncio.run(main(sys.argv[1]))
