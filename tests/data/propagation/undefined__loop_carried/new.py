import argparse

import torch
import torch.nn as nn

from rl import make_env, ActorCritic, rollout, compute_gae
import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument('--env', default='CartPole-v1')
parser.add_argument('--updates', type=int, default=2000)
parser.add_argument('--lr', type=float, default=7e-4)
parser.add_argument('--max-grad-norm', type=float, default=0.5)
args = parser.parse_args()

env = make_env(args.env, n_envs=8)
agent = ActorCritic(env.observation_space.shape[0], env.action_space.n)
optimizer = torch.optim.RMSprop(agent.parameters(), lr=args.lr, alpha=0.99, eps=1e-5)

obs = env.reset()
for update in range(args.updates):
    batch, obs = rollout(env, agent, obs, n_steps=5)
    adv, returns = compute_gae(batch, agent, gamma=0.99, lam=0.95)
    logp, values, entropy = agent.evaluate(batch.obs, batch.actions)
    policy_loss = -(adv.detach() * logp).mean()
    value_loss = (returns - values).pow(2).mean()
    loss = policy_loss + 0.5 * value_loss - 0.01 * entropy.mean()

    optimizer.zero_grad()
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    flor.log("grad_norm", grad_norm.item())
    if update % 100 == 0:
        print(update, batch.episode_returns.mean(), float(grad_norm))
torch.save(agent.state_dict(), 'a2c_%s.pt' % args.env)
