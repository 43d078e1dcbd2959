// The rls3 metadata side channel (Unity end). Format: rls3/bridges/messages.py (rls3-bridge/1).
using System;
using System.Text;
using Unity.MLAgents.SideChannels;
using UnityEngine;

namespace Rls3.Bridge
{
    /// <summary>Sends one UTF-8 JSON metadata message per answer as raw bytes (never WriteString,
    /// which Python reads as ASCII).</summary>
    public class Rls3MetadataChannel : SideChannel
    {
        public const string Id = "5907816c-7677-5986-8044-dd3eb0a39e4b"; // messages.CHANNEL_ID

        public Rls3MetadataChannel()
        {
            ChannelId = new Guid(Id);
        }

        public void SendJson(string json)
        {
            using (var msg = new OutgoingMessage())
            {
                msg.SetRawBytes(Encoding.UTF8.GetBytes(json));
                QueueMessageToSend(msg);
            }
        }

        protected override void OnMessageReceived(IncomingMessage msg)
        {
            // Format version 1 sends nothing from Python to Unity on this channel.
            Debug.LogWarning($"rls3: ignoring {msg.GetRawBytes().Length} bytes from Python on the metadata channel");
        }
    }
}
